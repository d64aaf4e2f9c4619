"""Scenario telemetry as Arrow tables, written as NDJSON or Parquet files plus labels."""

from __future__ import annotations

import itertools
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
    n = sc.fleet.n
    count = np.rint(tel["edge_count"]).astype(np.int64)
    errors = np.minimum(np.rint(tel["edge_errors"]).astype(np.int64), count)
    calls = pa.ListArray.from_arrays(sc.call_offsets, pa.StructArray.from_arrays(
        [sc.call_dst_array, pa.array(count), pa.array(errors),
         pa.array(np.round(tel["edge_latency_ms"], 3))], fields=list(CALL_TYPE)))
    cols = {
        "tenant": sc.tenant_array,
        "agent_id": sc.agent_array,
        "ts": pa.array(np.full(n, int(round(epoch_s * 1000)), dtype=np.int64),
                       pa.timestamp("ms", tz="UTC")),
    }
    for m in METRICS:
        v = tel[m]
        cols[m] = pa.array(np.rint(v).astype(np.int64) if m in INTEGER_METRICS else v)
    cols["calls"] = calls
    return pa.table(cols, schema=TELEMETRY)


def tick_records(sc: Scenario, epoch_s: float, tel: dict[str, np.ndarray]) -> list[dict]:
    """The same records as ``tick_table`` as plain dicts (``ts`` as epoch seconds, plus
    ``event_time``), built without Arrow's slow nested ``to_pylist``."""
    n = sc.fleet.n
    count = np.rint(tel["edge_count"]).astype(np.int64)
    errors = np.minimum(np.rint(tel["edge_errors"]).astype(np.int64), count).tolist()
    latency = np.round(tel["edge_latency_ms"], 3).tolist()
    count = count.tolist()
    dst = sc.call_dst_names
    off = sc.call_offsets.to_numpy().tolist()
    cols = {m: (np.rint(tel[m]).astype(np.int64) if m in INTEGER_METRICS else tel[m]).tolist()
            for m in METRICS}
    t = round(epoch_s * 1000) / 1000
    out = []
    for i in range(n):
        rec = {"tenant": sc.cfg.tenant, "agent_id": sc.agents[i], "ts": t, "event_time": t}
        for m in METRICS:
            rec[m] = cols[m][i]
        rec["calls"] = [{"dst": dst[k], "count": count[k], "errors": errors[k], "latency_ms": latency[k]}
                        for k in range(off[i], off[i + 1])]
        out.append(rec)
    return out


def write_table(table: pa.Table, path: str) -> None:
    """Atomically write a telemetry table as Parquet or NDJSON (by extension)."""
    tmp = path + ".tmp"
    if path.endswith(".parquet"):
        pq.write_table(table, tmp, compression="zstd")
    else:
        with open(tmp, "wb") as fh:
            for row in table.to_pylist():
                fh.write(orjson.dumps(row) + b"\n")
    os.replace(tmp, path)


def simulate_to_dir(scenarios: Scenario | list[Scenario], out_dir: str, fmt: str = "ndjson",
                    file_seconds: float = 10.0, pace_s: float = 0.0,
                    on_file: Callable[[str, int], None] | None = None) -> dict | list[dict]:
    """Run scenarios (one per tenant) in lockstep, writing one telemetry file per
    ``file_seconds`` of event time into ``out_dir`` (all tenants interleaved, as a collector
    would; ``pace_s`` of wall time between files, for live demos). Returns the labels
    document (a list of them when given a list of scenarios)."""
    single = isinstance(scenarios, Scenario)
    scs = [scenarios] if single else list(scenarios)
    if fmt not in ("ndjson", "parquet"):
        raise ValueError(f"format must be 'ndjson' or 'parquet', got {fmt!r}")
    if len({sc.cfg.tick_s for sc in scs}) != 1:
        raise ValueError("scenarios written together need the same tick")
    os.makedirs(out_dir, exist_ok=True)
    ticks_per_file = max(1, int(round(file_seconds / scs[0].cfg.tick_s)))
    chunk: list[pa.Table] = []
    part = 0

    def flush():
        nonlocal chunk, part
        if not chunk:
            return
        path = os.path.join(out_dir, f"part-{part:06d}.{fmt}")
        table = pa.concat_tables(chunk)
        write_table(table, path)
        if on_file:
            on_file(path, table.num_rows)
        chunk, part = [], part + 1
        if pace_s:
            time.sleep(pace_s)

    streams = [sc.ticks() for sc in scs]
    for n_ticks, step in enumerate(itertools.zip_longest(*streams), start=1):
        chunk.extend(tick_table(sc, item[0], item[1]) for sc, item in zip(scs, step) if item is not None)
        if n_ticks % ticks_per_file == 0:
            flush()
    flush()
    docs = [sc.labels_document() for sc in scs]
    return docs[0] if single else docs


def write_labels(docs: list[dict], path: str) -> None:
    """The labels file: one document per simulated tenant."""
    with open(path, "w") as fh:
        json.dump({"schema": "aura.labels/v1", "scenarios": docs}, fh, indent=2)
        fh.write("\n")
