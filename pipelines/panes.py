"""The job's per-pane output files, the same for every engine: one Parquet file per
(kind, tenant, window, pane) at ``<out>/<kind>/tenant=<t>/window=<start ms>-pane=<i>.parquet``,
written atomically so a replay overwrites, never duplicates."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import observe
from pipelines.topology.features import WindowFeatures
from pipelines.topology.rows import feature_table
from pipelines.windowing import WindowSnapshot, ms, snapshots_to_table


def write_pane(out_dir: str, kind: str, tenant: str, window_start_ms: int, pane: int,
               table: pa.Table) -> str:
    """One Parquet file per (kind, tenant, window, pane), written atomically: a replay
    overwrites, never duplicates."""
    path = os.path.join(out_dir, kind, f"tenant={tenant}", f"window={window_start_ms}-pane={pane}.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_snapshot(out_dir: str, snap: WindowSnapshot) -> str:
    """A window pane's snapshot (``snapshots/``), timed as the snapshot sink."""
    start_ms = ms(snap.window_start)
    with observe.stage("sinks", snap.tenant, start_ms, sink="snapshot"):
        return write_pane(out_dir, "snapshots", snap.tenant, start_ms, snap.pane_index,
                          snapshots_to_table([snap]))


def write_features(out_dir: str, wf: WindowFeatures, vec: np.ndarray) -> str:
    """A window pane's feature row (``features/``), timed as the features sink."""
    start_ms = ms(wf.window_start)
    with observe.stage("sinks", wf.tenant, start_ms, sink="features"):
        return write_pane(out_dir, "features", wf.tenant, start_ms, wf.pane_index, feature_table([(wf, vec)]))
