"""What the dashboard page (``GET /dashboard``) draws for one tenant, assembled from files:
the streaming job's per-window outputs under ``run/``, the alert service's incident records
(``run/incidents/``), the incident workflow's checkpoints (``run/incidents.sqlite``: the
open incident, its step, localisation and actions - the interventions, whatever the actuator;
``run/interventions.ndjson`` is only the dry-run actuator's log) and, when there is one, the
labels file ``<data dir>/labels.json`` (cascade onsets, ``aura.labels/v1``; ``make demo``
writes it when its simulation ends). Without labels the page says onsets are unknown.

Live updates are polled, not pushed: ``version`` is a digest of a handful of ``stat`` calls
(the tenant's output directories, whose mtime moves whenever the job renames a window's file
into place, the incident records, the workflow DB and its WAL, the labels file), served as
the response's ETag. A poll whose ``If-None-Match`` still matches costs those stats and a
304; a changed version is assembled once and cached, and every per-window file read is
cached by (path, mtime, size), so a new window costs reading that window only. Server-Sent
Events would need the same change detection (the job is another process that only writes
files) plus a long-lived connection per open page on the service's event loop and care with
buffering proxies; a 1.5 s conditional GET is simpler and well within "live".

Sizes for 1,000 agents and ~7,000 calls: one array per field, numbers rounded (x/y 4
decimals, health 2, error rate 3, latency whole ms), edges as a flat index list: ~100 KB of
JSON, ~20 KB gzipped (sent so when the client accepts it).
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.alerts import incidents as alert_records
from pipelines.alerts.outputs import TENANT_DIR
from pipelines.calibration import OK
from pipelines.incidents.store import DEFAULT_DB
from pipelines.service import outputs
from pipelines.service.graph_layout import layout
from pipelines.service.models import (
    Dashboard,
    DashboardGraph,
    DashboardIncident,
    DashboardMarker,
    DashboardMarkers,
    DashboardPast,
    DashboardTimeline,
)

LABELS_FILE = "labels.json"  # in the service's data directory
TIMELINE_WINDOWS = 360  # an hour of 10 s windows
PAST_INCIDENTS = 5
WORKFLOW_INCIDENTS = 20  # the newest workflow incidents read (the open one is always the newest)
UNHEALTHY_ERROR_RATE = 0.5  # as the features' unhealthy_frac (pipelines.topology.classic)
FAILING_EDGE = 0.5  # an edge whose calls fail at least this often is drawn as failing
GRAPH_ASPECT = 2.0  # the page's graph canvas, width / height
H0, H1 = "stress_h0_betti_t0.5", "stress_h1_betti_t0.5"
_SNAPSHOT_COLUMNS = ["window_start", "window_end", "pane_index", "agents", "n_samples", "agg_error_rate",
                     "agg_latency_p99_ms", "edges"]
PAST_NOTE = ("the tenant's most recent incidents, newest first: not ranked by similarity (retrieving "
             "the past incidents nearest in topology is not built yet)")


@dataclass(frozen=True)
class Sources:
    """Where the dashboard's inputs are, and how to read them."""

    run_dir: str
    labels_path: str
    cuts: tuple[float, ...]  # risk band cut points (the top band is the warning band)
    band_names: tuple[str, ...]
    timeout_ms: float  # p99 latency at or above this is unhealthy (the run's stress filtration)

    @property
    def workflow_db(self) -> str:
        return os.path.join(self.run_dir, os.path.basename(DEFAULT_DB))


class _Lru:
    """A small thread-safe LRU map: ``get(key, make)``."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, collections.OrderedDict(), threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_FILES, _GRAPHS, _DERIVED, _PAYLOADS = _Lru(50_000), _Lru(8), _Lru(64), _Lru(16)


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _cached(path: str, read: Callable[[str], Any]) -> Any:
    """``read(path)``, once per version of the file on disk."""
    return _FILES.get((path, read.__name__, _stat(path)), lambda: read(path))


def _round(a: np.ndarray, digits: int) -> list[float | None]:
    return [None if not math.isfinite(v) else v for v in np.round(a, digits).tolist()]


# -- change detection ---------------------------------------------------------------------------
def version(src: Sources, tenant: str, windows: int) -> str:
    """A digest that changes whenever anything the tenant's dashboard shows may have changed."""
    t = f"{TENANT_DIR}{tenant}"
    paths = [os.path.join(src.run_dir, "snapshots"), os.path.join(src.run_dir, "snapshots", t),
             os.path.join(src.run_dir, "features", t), os.path.join(src.run_dir, "predictions", t),
             os.path.join(src.run_dir, alert_records.INCIDENTS, t), src.workflow_db, f"{src.workflow_db}-wal",
             src.labels_path]
    key = repr((tenant, windows, [_stat(p) for p in paths]))
    return hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Payload:
    version: str
    json: bytes
    gzip: bytes  # the same, gzipped (~5x smaller)


def dashboard_json(src: Sources, tenant: str, windows: int = TIMELINE_WINDOWS) -> Payload:
    """The ``Dashboard`` as JSON (and gzipped), assembled once per version."""
    v = version(src, tenant, windows)

    def make() -> Payload:
        body = assemble(src, tenant, windows, v).model_dump_json().encode()
        return Payload(v, body, gzip.compress(body, 5))

    return _PAYLOADS.get((src, tenant, windows, v), make)


# -- reads of single files (cached by file version) ----------------------------------------------
def _prediction(path: str) -> tuple[float, bool, str]:
    f = pq.ParquetFile(path)
    cols = [c for c in ("probability", "certificate", "status") if c in f.schema_arrow.names]
    r = f.read(columns=cols).to_pylist()[0]
    return float(r["probability"]), r["certificate"] is not None, r.get("status") or OK


def _betti(path: str) -> tuple[float | None, float | None]:
    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    r = f.read(columns=[c for c in (H0, H1) if c in names]).to_pylist()[0]
    return tuple(None if r.get(k) is None or not math.isfinite(r[k]) else round(float(r[k]), 3)
                 for k in (H0, H1))


def _values(table, column: str, field: str | None = None, dtype=float) -> np.ndarray:
    """The one row's list column (or a field of its structs) as numpy (not pyarrow's
    ``to_numpy``, which imports pandas: ~1 s on a first request)."""
    values = table.column(column).chunk(0).flatten()
    return np.asarray((values.field(field) if field else values).to_pylist(), dtype)


def _graph(path: str, timeout_ms: float) -> dict:
    """The snapshot's agents, health, edges and layout."""
    t = pq.ParquetFile(path).read(columns=_SNAPSHOT_COLUMNS)
    agents = t.column("agents").chunk(0).flatten().to_pylist()
    n = len(agents)
    seen = _values(t, "n_samples", dtype=np.int64) > 0
    err, p99 = _values(t, "agg_error_rate"), _values(t, "agg_latency_p99_ms")
    esrc, edst = _values(t, "edges", "src", np.int64), _values(t, "edges", "dst", np.int64)
    count, errors = _values(t, "edges", "count"), _values(t, "edges", "errors")
    health = np.maximum(np.nan_to_num(err) / UNHEALTHY_ERROR_RATE, np.nan_to_num(p99) / timeout_ms)
    health = np.where(seen, np.round(np.clip(health, 0, 1), 2), -1.0)
    x, y = layout(n, esrc, edst, GRAPH_ASPECT)
    flat = np.empty(2 * len(esrc), np.int64)
    flat[0::2], flat[1::2] = esrc, edst
    return {"window_start_ms": t.column("window_start")[0].value,
            "window_end_ms": t.column("window_end")[0].value, "pane": t.column("pane_index")[0].as_py(),
            "agents": agents,
            "x": np.round(x, 4).tolist(), "y": np.round(y, 4).tolist(),
            "health": health.tolist(), "error_rate": _round(np.where(seen, err, np.nan), 3),
            "latency_p99_ms": _round(np.where(seen, p99, np.nan), 0), "edges": flat.tolist(),
            "failing_edges": np.flatnonzero(errors >= FAILING_EDGE * np.maximum(count, 1)).tolist()}


def _labels(path: str) -> dict[str, list[dict]] | str:
    """tenant -> its labelled cascades, or why the file cannot be used."""
    from pipelines.backtest.labels import LabelsError, load_labels

    try:
        return {d["tenant"]: d["cascades"] for d in load_labels(path)}
    except (LabelsError, OSError) as err:
        return f"the labels file cannot be read: {err}"


# -- the parts -----------------------------------------------------------------------------------
def _timeline(src: Sources, tenant: str, windows: int) -> DashboardTimeline:
    snaps = outputs.latest_panes(src.run_dir, "snapshots", tenant)
    preds = outputs.latest_panes(src.run_dir, "predictions", tenant)
    feats = outputs.latest_panes(src.run_dir, "features", tenant)
    starts = sorted(set(snaps) | set(preds))[-windows:]
    tl = DashboardTimeline(window_ms=None, start_ms=starts, probability=[], committed=[], status=[], h0=[],
                           h1=[])
    for s in starts:
        p, c, status = _cached(preds[s], _prediction) if s in preds else (None, False, None)
        h0, h1 = _cached(feats[s], _betti) if s in feats else (None, None)
        tl.probability.append(None if p is None else round(p, 4))
        tl.committed.append(c)
        tl.status.append(status)
        tl.h0.append(h0)
        tl.h1.append(h1)
    if len(starts) > 1:
        tl.window_ms = int(np.median(np.diff(starts)))
    return tl


def _workflow(src: Sources, tenant: str) -> list[dict]:
    """The tenant's newest workflow incidents (latest checkpoint values), newest first."""
    key = (src.workflow_db, tenant, _stat(src.workflow_db), _stat(f"{src.workflow_db}-wal"))
    if key[2] is None:
        return []

    def read() -> list[dict]:
        from pipelines.incidents import store

        saver = store.open_saver(src.workflow_db)
        try:
            prefix = f"inc-{tenant}-"
            ids = [t for t in store.thread_ids(saver) if t.startswith(prefix) and t[len(prefix):].isdigit()]
            ids.sort(key=lambda t: int(t[len(prefix):]), reverse=True)
            found = [store.values(saver, t) for t in ids[:WORKFLOW_INCIDENTS]]
        finally:
            saver.conn.close()
        return [{k: x for k, x in v.items() if k not in ("snapshot", "inputs")}
                for v in found if v.get("tenant") == tenant]

    return _DERIVED.get(key, read)


def _action(d: dict) -> str:
    return f"{d['kind']} {d['magnitude']:g} on {'/'.join(d['targets'][:3])}" + \
        ("..." if len(d["targets"]) > 3 else "")


def _from_workflow(v: dict) -> DashboardIncident:
    from pipelines.incidents.workflow import NODES  # imports LangGraph: only once there are incidents

    top = int(v.get("playbook", {}).get("top_k", 5))
    done = [a for a in v.get("actions", []) if a.get("status") not in ("rejected", "failed")]
    return DashboardIncident(
        id=v["id"], source="workflow", status=v.get("status", "?"), step=v.get("route"), steps=list(NODES),
        opened_ms=v.get("opened"), closed_ms=v.get("closed"), mechanism=v.get("mechanism"),
        max_risk=None if v.get("max_risk") is None else round(float(v["max_risk"]), 4),
        outcome=v.get("outcome"),
        escalation=int(v.get("escalation", 0)), targets=[t["agent"] for t in v.get("targets", [])][:top],
        waiting=[_action(d) for d in v.get("plan", [])] if v.get("route") == "approve" else [],
        actions=len(done), recent_steps=[f"{e['step']}: {e['reason']}" for e in v.get("timeline", [])[-6:]])


def _from_alert(r: dict) -> DashboardIncident:
    return DashboardIncident(
        id=r["id"], source="alert", status=r["status"], step=None, steps=[],
        opened_ms=r["opened_window"]["start"],
        closed_ms=(r.get("resolved_window") or {}).get("end"), mechanism=r.get("mechanism"),
        max_risk=r.get("peak_probability"), outcome=None,
        targets=[a["agent"] for a in r.get("implicated_agents", [])])


def _onsets(src: Sources, tenant: str, first_ms: int | None) -> tuple[list[DashboardMarker], bool, str]:
    name = os.path.basename(src.labels_path)
    if _stat(src.labels_path) is None:
        return [], False, f"onsets unknown: no labels file ({name} in the service's data directory)"
    docs = _cached(src.labels_path, _labels)
    if isinstance(docs, str):
        return [], False, f"onsets unknown: {docs}"
    if tenant not in docs:
        return [], False, f"onsets unknown: {name} has no document for tenant {tenant}"
    marks = [DashboardMarker(at_ms=int(c["onset"] * 1000), kind="onset",
                             label=f"onset: {c.get('mechanism', '?')}") for c in docs[tenant]]
    marks = [m for m in marks if first_ms is None or m.at_ms >= first_ms]
    n = len(docs[tenant])
    return marks, True, f"{n} labelled cascade onset(s) in {name}" if n else \
        f"{name}: no cascade labelled for {tenant}"


def assemble(src: Sources, tenant: str, windows: int = TIMELINE_WINDOWS, v: str = "") -> Dashboard:
    """The whole ``Dashboard`` of ``tenant`` (``v``: its version, for the page)."""
    snaps = outputs.latest_panes(src.run_dir, "snapshots", tenant)
    latest = snaps[max(snaps)] if snaps else None
    if latest is None:
        graph = {"window_start_ms": None, "window_end_ms": None, "pane": None, "agents": [], "x": [], "y": [],
                 "health": [], "error_rate": [], "latency_p99_ms": [], "edges": [], "failing_edges": []}
    else:
        key = (latest, _stat(latest), src.timeout_ms)
        graph = dict(_GRAPHS.get(key, lambda: _graph(latest, src.timeout_ms)))
    tl = _timeline(src, tenant, windows)
    if tl.window_ms is None and graph["window_start_ms"] is not None:  # a single window so far
        tl.window_ms = graph["window_end_ms"] - graph["window_start_ms"]
    first = tl.start_ms[0] if tl.start_ms else None
    top = src.band_names[-1]
    cuts = src.cuts
    warnings = [DashboardMarker(at_ms=s, kind="warning", label=f"committed {top} risk {p:.2f}")
                for s, p, c, st in zip(tl.start_ms, tl.probability, tl.committed, tl.status)
                if c and st == OK and p is not None and p >= cuts[-1]]
    records = alert_records.list_incidents(src.run_dir, tenant)
    alerts = [DashboardMarker(at_ms=r["opened_window"]["start"], kind=r.get("kind", "alert"),
                              label=f"alert {r['id']} {r.get('kind', '')} ({r['status']})")
              for r in records if first is None or r["opened_window"]["start"] >= first]
    flows = _workflow(src, tenant)
    interventions = [DashboardMarker(at_ms=a["window_start"], kind=a["kind"],
                                     label=f"{_action(a)} ({a['status']})")
                     for v in flows for a in v.get("actions", [])
                     if first is None or a["window_start"] >= first]
    onsets, known, note = _onsets(src, tenant, first)
    open_flow = next((v for v in flows if v.get("status") == "open"), None)
    open_alert = next((r for r in records if r["status"] == "open"), None)
    incident = _from_workflow(open_flow) if open_flow else _from_alert(open_alert) if open_alert else None
    index = {a: i for i, a in enumerate(graph["agents"])}
    graph["implicated"] = [index[a] for a in (incident.targets if incident else []) if a in index]
    graph["implicated_source"] = incident.source if incident else None
    past = [_from_workflow(v) for v in flows if v is not open_flow][:PAST_INCIDENTS] if flows else \
        [_from_alert(r) for r in records if r is not open_alert][:PAST_INCIDENTS]
    return Dashboard(
        tenant=tenant, tenants=outputs.tenants(src.run_dir), version=v, bands=list(cuts),
        band_names=list(src.band_names), graph=DashboardGraph(**graph), timeline=tl,
        markers=DashboardMarkers(warnings=warnings, alerts=sorted(alerts, key=lambda m: m.at_ms),
                                 interventions=sorted(interventions, key=lambda m: m.at_ms), onsets=onsets,
                                 onsets_known=known, onsets_note=note),
        incident=incident, past=DashboardPast(ranking="recent", note=PAST_NOTE, incidents=past))

