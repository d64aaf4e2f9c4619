"""Scenario telemetry as Arrow tables, written as NDJSON or Parquet files plus labels."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.simulation.scenario import Scenario
from schemas.arrow import CALL_TYPE, INTEGER_METRICS, METRICS, TELEMETRY


def tick_table(sc: Scenario, epoch_s: float, tel: dict[str, np.ndarray]) -> pa.Table:
    """One record per agent for one tick, in the TELEMETRY Arrow schema."""
    f, n = sc.fleet, sc.fleet.n
    count = np.rint(tel["edge_count"]).astype(np.int64)
    errors = np.minimum(np.rint(tel["edge_errors"]).astype(np.int64), count)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(f.e_src, minlength=n))]).astype(np.int32)
    ids = sc.agent_array
    calls = pa.ListArray.from_arrays(offsets, pa.StructArray.from_arrays(
        [ids.take(pa.array(f.e_dst)), pa.array(count), pa.array(errors),
         pa.array(np.round(tel["edge_latency_ms"], 3))], fields=list(CALL_TYPE)))
    cols = {
        "tenant": pa.array(np.full(n, sc.cfg.tenant, dtype=object), pa.string()),
        "agent_id": ids,
        "ts": pa.array(np.full(n, int(round(epoch_s * 1000)), dtype=np.int64),
                       pa.timestamp("ms", tz="UTC")),
    }
    for m in METRICS:
        v = tel[m]
        cols[m] = pa.array(np.rint(v).astype(np.int64) if m in INTEGER_METRICS else np.round(v, 4))
    cols["calls"] = calls
    return pa.table(cols, schema=TELEMETRY)


def write_table(table: pa.Table, path: str) -> None:
    """Atomically write a telemetry table as Parquet or NDJSON (by extension)."""
    tmp = path + ".tmp"
    if path.endswith(".parquet"):
        pq.write_table(table, tmp)
    else:
        with open(tmp, "wb") as fh:
            for row in table.to_pylist():
                fh.write(orjson.dumps(row) + b"\n")
    os.replace(tmp, path)


def simulate_to_dir(sc: Scenario, out_dir: str, fmt: str = "ndjson", file_seconds: float = 10.0,
                    pace_s: float = 0.0, on_file: Callable[[str, int], None] | None = None) -> dict:
    """Run a scenario, writing one telemetry file per ``file_seconds`` of event time into
    ``out_dir`` (``pace_s`` of wall time between files, for live demos), then the labels.
    Returns the labels document."""
    if fmt not in ("ndjson", "parquet"):
        raise ValueError(f"format must be 'ndjson' or 'parquet', got {fmt!r}")
    os.makedirs(out_dir, exist_ok=True)
    ticks_per_file = max(1, int(round(file_seconds / sc.cfg.tick_s)))
    chunk: list[pa.Table] = []
    part = 0

    def flush():
        nonlocal chunk, part
        if not chunk:
            return
        path = os.path.join(out_dir, f"{sc.cfg.tenant}-part-{part:06d}.{fmt}")
        table = pa.concat_tables(chunk)
        write_table(table, path)
        if on_file:
            on_file(path, table.num_rows)
        chunk, part = [], part + 1
        if pace_s:
            time.sleep(pace_s)

    for epoch_s, tel in sc.ticks():
        chunk.append(tick_table(sc, epoch_s, tel))
        if len(chunk) == ticks_per_file:
            flush()
    flush()
    return sc.labels_document()


def write_labels(docs: list[dict], path: str) -> None:
    """The labels file: one document per simulated tenant."""
    with open(path, "w") as fh:
        json.dump({"schema": "aura.labels/v1", "scenarios": docs}, fh, indent=2)
        fh.write("\n")
