"""Reading the streaming job's per-pane outputs into verdicts.

``<out>/predictions/tenant=<t>/window=<start ms>-pane=<i>.parquet`` (PREDICTION_ROW, one
row; ``certificate`` is the consensus QC as JSON, null without consensus; ``status`` the
verdict status, ``ok`` in files written before it existed), the feature row of
the same (tenant, window, pane) under ``features/`` (fleet health and the mechanism's inputs)
and the snapshot under ``snapshots/`` (implicated agents, ``pipelines.graph.rows.implicated``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipelines.alerts.policy import Verdict
from pipelines.calibration import OK
from pipelines.graph.rows import implicated
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.filtrations import StressFiltration
from pipelines.windowing import WindowSnapshot, snapshots_from_table

PANE_FILE = re.compile(r"^window=(\d+)-pane=(\d+)\.parquet$")
TENANT_DIR = "tenant="
_FEATURES = set(FeatureExtractor.names())


def _read(path: str):
    return pq.ParquetFile(path).read()  # ~2x faster than read_table's dataset path for one small file


@dataclass(frozen=True)
class PaneFile:
    """One output file of the job and what identifies its version on disk."""

    path: str
    tenant: str
    window_start: int
    pane: int
    mtime: float  # seconds (when the job renamed it into place)
    size: int

    @property
    def signature(self) -> tuple[int, int]:
        return int(self.mtime * 1e9), self.size


def pane_path(out_dir: str, kind: str, tenant: str, window_start: int, pane: int) -> str:
    return os.path.join(out_dir, kind, f"{TENANT_DIR}{tenant}", f"window={window_start}-pane={pane}.parquet")


def scan(out_dir: str, kind: str = "predictions",
         skip: Callable[[str, int, str], bool] | None = None) -> list[PaneFile]:
    """Every complete pane file of ``kind`` (the job's temporary files are left out), except
    those ``skip(tenant, window_start, path)`` rules out before they are stat'ed."""
    root = os.path.join(out_dir, kind)
    found: list[PaneFile] = []
    try:
        tenants = [e for e in os.scandir(root) if e.is_dir() and e.name.startswith(TENANT_DIR)]
    except FileNotFoundError:
        return found
    for t in tenants:
        tenant = t.name[len(TENANT_DIR):]
        try:
            entries = list(os.scandir(t.path))
        except FileNotFoundError:
            continue
        for e in entries:
            m = PANE_FILE.match(e.name)
            if m is None or (skip is not None and skip(tenant, int(m.group(1)), e.path)):
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            found.append(PaneFile(e.path, tenant, int(m.group(1)), int(m.group(2)), st.st_mtime, st.st_size))
    return found


def _pane_or_latest(out_dir: str, kind: str, tenant: str, window_start: int, pane: int) -> str | None:
    """The file of this pane, else the latest pane of the window present, else None."""
    exact = pane_path(out_dir, kind, tenant, window_start, pane)
    if os.path.exists(exact):
        return exact
    for p in range(pane - 1, -1, -1):
        path = pane_path(out_dir, kind, tenant, window_start, p)
        if os.path.exists(path):
            return path
    return None


def has_features(out_dir: str, tenant: str, window_start: int, pane: int) -> bool:
    return _pane_or_latest(out_dir, "features", tenant, window_start, pane) is not None


def read_features(out_dir: str, tenant: str, window_start: int, pane: int) -> dict[str, float] | None:
    """The window's feature values by name (finite ones), or None without a feature file."""
    path = _pane_or_latest(out_dir, "features", tenant, window_start, pane)
    if path is None:
        return None
    rows = _read(path).to_pylist()
    if not rows:
        return None
    return {k: float(v) for k, v in rows[0].items()
            if k in _FEATURES and isinstance(v, int | float) and math.isfinite(v)}


def read_snapshot(out_dir: str, tenant: str, window_start: int, pane: int) -> WindowSnapshot | None:
    """The window's snapshot (this pane's, else the latest earlier one), or None without one."""
    path = _pane_or_latest(out_dir, "snapshots", tenant, window_start, pane)
    snaps = snapshots_from_table(_read(path)) if path is not None else []
    return snaps[0] if snaps else None


def read_implicated(out_dir: str, tenant: str, window_start: int, pane: int, stress: StressFiltration,
                    top_k: int) -> tuple[tuple[str, float], ...]:
    """The window's most involved agents, from its snapshot (empty without one)."""
    snap = read_snapshot(out_dir, tenant, window_start, pane) if top_k > 0 else None
    return tuple(implicated(snap, stress, top_k)) if snap is not None else ()


def read_verdict(out_dir: str, pf: PaneFile, stress: StressFiltration | None = None, top_k: int = 5,
                 agents: bool | Callable[[float], bool] = True) -> Verdict:
    """The verdict of one prediction file, with its window's features and implicated agents
    (those only when ``agents`` is True or, a callable, says so for the probability: reading
    a snapshot costs ~20 ms, the rest ~2 ms)."""
    rows = _read(pf.path).to_pylist()
    if len(rows) != 1:
        raise ValueError(f"{pf.path}: expected one prediction row, found {len(rows)}")
    r = rows[0]
    start, end = (int(r[k].timestamp() * 1000 + 0.5) for k in ("window_start", "window_end"))
    if (r["tenant"], start, int(r["pane_index"])) != (pf.tenant, pf.window_start, pf.pane):
        raise ValueError(f"{pf.path}: row is ({r['tenant']}, {start}, pane {r['pane_index']}), not what its "
                         f"name says")
    p = float(r["probability"])
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"{pf.path}: probability {p} outside [0, 1]")
    want = agents(p) if callable(agents) else agents
    hot = read_implicated(out_dir, pf.tenant, start, pf.pane, stress or StressFiltration(), top_k) \
        if want else ()
    return Verdict(pf.tenant, start, end, p, r["certificate"], pf.pane,
                   read_features(out_dir, pf.tenant, start, pf.pane), hot, r.get("status") or OK)
