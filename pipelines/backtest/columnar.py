"""The columnar fast path of parse -> validate -> window: whole files as Arrow tables.

The per-record parser (``pipelines.telemetry``) costs ~50 us a record; here a file is read
by Arrow (``pyarrow.json`` / Parquet), the JSON-schema contract is checked with vectorised
Arrow/numpy expressions, and only rows those checks cannot vouch for (a malformed line, a
type Arrow cannot hold, any failed check) go through the per-record validator, which gives
their dead-letter reason - or accepts them when the vectorised checks were merely stricter.
So every row ends as exactly what ``parse_file`` makes of it: a record (here a row of a
``VALID`` table) or a ``DeadLetter`` with the same reason, detail, source and position.

Window snapshots are built from the tables with the aggregation code the job uses
(``windowing.snapshot_from_arrays``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from pipelines.telemetry import (
    MALFORMED_JSON,
    MAX_EPOCH_S,
    DeadLetter,
    TimestampGuard,
    parse_parquet,
    parse_timestamp,
    validate,
)
from pipelines.windowing import WindowSnapshot, WindowSpec, build_snapshot, snapshot_from_arrays
from schemas.arrow import CALL_TYPE, METRICS, TELEMETRY

_F = pa.float64()
# A validated record: what ``validate`` returns, with every number as float64 (the snapshot
# converts them so anyway) and the record's source position.
VALID_CALL = pa.struct([pa.field("dst", pa.string()), pa.field("count", _F), pa.field("errors", _F),
                        pa.field("latency_ms", _F)])
VALID = pa.schema([pa.field("tenant", pa.string()), pa.field("agent_id", pa.string()),
                   pa.field("event_time", _F), *[pa.field(m, _F) for m in METRICS],
                   pa.field("calls", pa.list_(VALID_CALL)), pa.field("position", pa.int64())])

_RANGES = {"latency_p50_ms": (0.0, 3_600_000.0), "latency_p99_ms": (0.0, 3_600_000.0),
           "error_rate": (0.0, 1.0), "cpu": (0.0, 1.0), "memory": (0.0, 1.0),
           "request_count": (0, None), "queue_depth": (0, None), "in_flight": (0, None)}
_TENANT_RE = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_MAX_CALLS = 10_000


def _json_schema(ts_type: pa.DataType) -> pa.Schema:
    """What Arrow reads an NDJSON line as; ``schema_version`` only to notice it is there."""
    call = pa.struct([pa.field(f.name, f.type) for f in CALL_TYPE])  # nullable: missing -> null
    fields = [pa.field(f.name, pa.list_(call) if f.name == "calls" else f.type)
              for f in TELEMETRY if f.name != "ts"]
    return pa.schema([*fields, pa.field("ts", ts_type), pa.field("schema_version", _F)])


@dataclass
class ColumnarResult:
    """Outcome of one file or table: ``n_read == table.num_rows + len(dead)``."""

    table: pa.Table  # VALID rows, in source order
    dead: list[DeadLetter]
    n_read: int


# -- vectorised contract --------------------------------------------------------------------
def _np(col) -> np.ndarray:
    if col.null_count:
        col = pc.fill_null(col, False if pa.types.is_boolean(col.type) else 0)
    return col.to_numpy(zero_copy_only=False)


def _ok_numbers(table: pa.Table) -> np.ndarray:
    """Rows whose top-level fields all pass the contract (False where unsure)."""
    n = table.num_rows
    ok = np.ones(n, dtype=bool)
    for name in ("tenant", "agent_id", *METRICS, "calls", "ts"):
        ok &= ~_np(table.column(name).is_null()) if table.column(name).null_count else True
    if "schema_version" in table.column_names:  # rare: left to the per-record validator
        ok &= _np(table.column("schema_version").is_null())
    ok &= _np(pc.match_substring_regex(table.column("tenant"), _TENANT_RE)).astype(bool)
    alen = _np(pc.utf8_length(table.column("agent_id")))
    ok &= (alen >= 1) & (alen <= 256)
    for name, (lo, hi) in _RANGES.items():
        v = _np(table.column(name)).astype(np.float64)
        good = np.isfinite(v) & (v >= lo)
        if hi is not None:
            good &= v <= hi
        ok &= good
    p50, p99 = _np(table.column("latency_p50_ms")), _np(table.column("latency_p99_ms"))
    ok &= p99 >= p50
    return ok


def _ok_calls(calls: pa.ChunkedArray) -> np.ndarray:
    """Rows whose call lists all pass the contract."""
    calls = calls.combine_chunks()
    n = len(calls)
    lengths = _np(pc.list_value_length(calls))
    ok = lengths <= _MAX_CALLS
    flat = pc.list_flatten(calls)
    if len(flat) == 0:
        return ok
    parent = pc.list_parent_indices(calls).to_numpy()
    fields = {f: flat.field(f) for f in ("dst", "count", "errors", "latency_ms")}
    bad = np.asarray(flat.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    for arr in fields.values():
        if arr.null_count:
            bad |= arr.is_null().to_numpy(zero_copy_only=False)
    dlen = _np(pc.utf8_length(fields["dst"]))
    count = _np(fields["count"]).astype(np.float64)
    errors = _np(fields["errors"]).astype(np.float64)
    lat = _np(fields["latency_ms"]).astype(np.float64)
    bad |= (dlen < 1) | (dlen > 256) | ~(count >= 0) | ~(errors >= 0) | (errors > count)
    bad |= ~np.isfinite(lat) | ~(lat >= 0) | ~(lat <= 3_600_000.0)
    rows_bad = np.bincount(parent[bad], minlength=n) > 0
    return ok & ~rows_bad


def _event_times(ts: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(event time, ok) from ``ts``: strings through the parser's own ``parse_timestamp``
    (once per distinct string), numbers and Arrow timestamps vectorised."""
    if pa.types.is_timestamp(ts.type):  # Parquet: integer ms/us since the epoch
        unit = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[ts.type.unit]
        raw = _np(ts.cast(pa.int64()))
        t = raw.astype(np.float64) / unit
        ok = (raw >= 0) & (t < MAX_EPOCH_S)
        if unit == 1_000_000_000:  # isoformat drops nanoseconds; let the per-record path decide
            ok &= raw % 1000 == 0
        return t, ok
    if pa.types.is_string(ts.type):
        uniq = pc.unique(ts)
        times = np.empty(len(uniq))
        good = np.ones(len(uniq), dtype=bool)
        for i, s in enumerate(uniq.to_pylist()):
            try:
                times[i] = parse_timestamp(s) if s is not None else np.nan
            except (ValueError, OverflowError, OSError):
                good[i] = False
            good[i] &= s is not None
        idx = _np(pc.index_in(ts, value_set=uniq))
        return times[idx], good[idx]
    t = _np(ts).astype(np.float64)
    return t, np.isfinite(t) & (t >= 0) & (t < MAX_EPOCH_S)


def _to_valid(table: pa.Table, times: np.ndarray, positions: np.ndarray) -> pa.Table:
    calls = table.column("calls").cast(pa.list_(VALID_CALL))
    cols = [table.column("tenant"), table.column("agent_id"), pa.array(times, _F),
            *[table.column(m).cast(_F) for m in METRICS], calls, pa.array(positions, pa.int64())]
    return pa.Table.from_arrays(cols, schema=VALID)


def _from_records(records: list[dict], positions: list[int]) -> pa.Table:
    """VALID rows from records the per-record validator accepted."""
    if not records:
        return VALID.empty_table()
    cols = {"tenant": [r["tenant"] for r in records], "agent_id": [r["agent_id"] for r in records],
            "event_time": [float(r["event_time"]) for r in records]}
    for m in METRICS:
        cols[m] = [float(r[m]) for r in records]
    cols["calls"] = [[{"dst": c["dst"], "count": float(c["count"]), "errors": float(c["errors"]),
                       "latency_ms": float(c["latency_ms"])} for c in r["calls"]] for r in records]
    cols["position"] = positions
    return pa.table(cols, schema=VALID)


def _split(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(rows the vectorised contract accepts, their event times)."""
    ok = _ok_numbers(table) & _ok_calls(table.column("calls"))
    times, t_ok = _event_times(table.column("ts"))
    return ok & t_ok, times


def _guard(valid: pa.Table, dead: list[DeadLetter], guard: TimestampGuard | None, source: str,
           raw_of) -> tuple[pa.Table, list[DeadLetter]]:
    """The parser's ``TimestampGuard`` over the accepted rows (vectorised reference and test;
    the far rows' dead letters come from the guard itself)."""
    if guard is None or valid.num_rows == 0:
        return valid, dead
    t = valid.column("event_time").to_numpy()
    ref = guard.watermark if guard.watermark is not None else float(np.sort(t)[len(t) // 2])
    far = (t > ref + guard.max_ahead_s) | (t < ref - guard.max_behind_s)
    if not far.any():
        return valid, dead
    idx = np.flatnonzero(far)
    pos = valid.column("position").to_numpy()[idx]
    items = [({"event_time": float(t[i])}, raw_of(int(p)), int(p)) for i, p in zip(idx, pos)]
    _, far_dead = replace(guard, watermark=ref).check(items, source)
    return valid.filter(pa.array(~far)), dead + far_dead


# -- NDJSON ---------------------------------------------------------------------------------
def _read_lines(buf: bytes, n: int) -> pa.Table | None:
    """The lines as one Arrow table, or None when Arrow cannot read them as n records."""
    for ts_type in (pa.string(), _F):
        try:
            t = pj.read_json(io.BytesIO(buf), parse_options=pj.ParseOptions(
                explicit_schema=_json_schema(ts_type), unexpected_field_behavior="error"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
            continue
        if t.num_rows == n:
            return t
    return None


def _read_blocks(lines: list[bytes], lo: int, hi: int, out: list) -> None:
    """Arrow-read lines[lo:hi]; halve a range Arrow refuses, down to single lines (which
    the per-record parser then takes)."""
    t = _read_lines(b"\n".join(lines[lo:hi]), hi - lo)
    if t is not None:
        out.append((lo, t))
    elif hi - lo > 1:
        mid = (lo + hi) // 2
        _read_blocks(lines, lo, mid, out)
        _read_blocks(lines, mid, hi, out)
    else:
        out.append((lo, None))


def parse_ndjson_bytes(data: bytes, source: str, guard: TimestampGuard | None = None) -> ColumnarResult:
    """An NDJSON file's bytes -> valid rows + dead letters, as ``parse_lines`` would."""
    all_lines = data.split(b"\n")
    if b"\r" in data:
        all_lines = [x.rstrip(b"\r\n") for x in all_lines]
    keep = [(i, x) for i, x in enumerate(all_lines, start=1) if x.strip()]
    n_read = len(keep)
    parts, dead, slow_recs, slow_pos = [], [], [], []
    # only lines that look like one JSON object go to Arrow (pyarrow 16 crashes on a bare
    # "null" line); the rest go straight to the per-record parser
    objects = [(i, x) for i, x in keep if x.lstrip()[:1] == b"{" and x.rstrip()[-1:] == b"}"]
    if len(objects) < n_read:
        for i, x in keep:
            if not (x.lstrip()[:1] == b"{" and x.rstrip()[-1:] == b"}"):
                _slow(x, source, i, slow_recs, slow_pos, dead)
    lines = [x for _, x in objects]
    positions = np.array([i for i, _ in objects], dtype=np.int64)
    blocks: list = []
    if lines:
        _read_blocks(lines, 0, len(lines), blocks)
    for lo, table in blocks:
        if table is None:  # one line Arrow could not read: the per-record parser decides
            _slow(lines[lo], source, int(positions[lo]), slow_recs, slow_pos, dead)
            continue
        ok, times = _split(table)
        pos = positions[lo:lo + table.num_rows]
        if ok.all():
            parts.append(_to_valid(table, times, pos))
            continue
        mask = pa.array(ok)
        parts.append(_to_valid(table.filter(mask), times[ok], pos[ok]))
        for j in np.flatnonzero(~ok):
            _slow(lines[lo + j], source, int(pos[j]), slow_recs, slow_pos, dead)
    parts.append(_from_records(slow_recs, slow_pos))
    valid = pa.concat_tables(parts)
    if len(parts) > 1:
        valid = valid.sort_by("position")
    by_pos = dict(keep)
    valid, dead = _guard(valid, dead, guard, source, lambda p: by_pos[p])
    return ColumnarResult(valid, dead, n_read)


def _slow(raw: bytes, source: str, pos: int, recs: list, positions: list, dead: list) -> None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        dead.append(DeadLetter(MALFORMED_JSON, str(err), source, pos, raw))
        return
    rec, reason, detail = validate(obj)
    if rec is None:
        dead.append(DeadLetter(reason, detail, source, pos, raw))
    else:
        recs.append(rec)
        positions.append(pos)


# -- Arrow tables (Parquet files, the simulator) ----------------------------------------------
def _matches_telemetry(schema: pa.Schema) -> bool:
    return schema.names == TELEMETRY.names and all(
        schema.field(f.name).type == f.type for f in TELEMETRY)


def _row_json(table: pa.Table, i: int) -> tuple[dict, bytes]:
    """A row as the per-record Parquet reader sees it (``ts`` as ISO text) and its JSON bytes."""
    from datetime import datetime

    row = table.slice(i, 1).to_pylist()[0]
    if isinstance(row.get("ts"), datetime):
        row["ts"] = row["ts"].isoformat()
    return row, orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_table(table: pa.Table, source: str, guard: TimestampGuard | None = None) -> ColumnarResult:
    """A telemetry table (TELEMETRY schema) -> valid rows + dead letters, as
    ``parse_parquet`` would (positions are 0-based row indices)."""
    ok, times = _split(table)
    positions = np.arange(table.num_rows, dtype=np.int64)
    valid = _to_valid(table.filter(pa.array(ok)) if not ok.all() else table, times[ok], positions[ok])
    dead: list[DeadLetter] = []
    recs, pos = [], []
    for i in np.flatnonzero(~ok):
        row, raw = _row_json(table, int(i))
        rec, reason, detail = validate(row)
        if rec is None:
            dead.append(DeadLetter(reason, detail, source, int(i), raw))
        else:
            recs.append(rec)
            pos.append(int(i))
    if recs:
        valid = pa.concat_tables([valid, _from_records(recs, pos)]).sort_by("position")
    valid, dead = _guard(valid, dead, guard, source, lambda p: _row_json(table, p)[1])
    return ColumnarResult(valid, dead, table.num_rows)


def parse_file_columnar(path: str, guard: TimestampGuard | None = None) -> ColumnarResult:
    """A telemetry file by extension (.parquet, else NDJSON); a Parquet file in another
    layout than the contract's Arrow schema goes through the per-record reader whole."""
    if not path.endswith(".parquet"):
        with open(path, "rb") as fh:
            return parse_ndjson_bytes(fh.read(), path, guard)
    try:
        table = pq.read_table(path)
    except Exception:  # noqa: BLE001 - the per-record reader reports the unreadable file
        table = None
    if table is None or not _matches_telemetry(table.schema):
        res = parse_parquet(path, guard)
        positions = [pos for _, pos in res.origins]
        return ColumnarResult(_from_records(res.records, positions), res.dead, res.n_read)
    return parse_table(table, path, guard)


# -- windowing ------------------------------------------------------------------------------
def slice_tables(valid: pa.Table, spec: WindowSpec) -> list[tuple[tuple[str, pa.Table], float]]:
    """``slice_batches`` for a VALID table: ((tenant, rows of one slide-aligned slice), start)."""
    if valid.num_rows == 0:
        return []
    slide_us = int(round(spec.slide * 1_000_000))
    t_us = np.rint(valid.column("event_time").to_numpy() * 1_000_000).astype(np.int64)
    start_us = t_us - t_us % slide_us
    tenants = valid.column("tenant").combine_chunks().dictionary_encode()
    names = tenants.dictionary.to_pylist()
    rank = np.argsort(np.argsort(np.array(names, dtype=object)))  # tenant order by name
    codes = rank[tenants.indices.to_numpy()]
    order = np.lexsort((start_us, codes))
    keys = np.stack([codes[order], start_us[order]], axis=1)
    cut = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
    bounds = np.concatenate([[0], cut, [len(order)]])
    by_rank = {int(r): n for n, r in zip(names, rank)}
    sorted_table = valid.take(pa.array(order))
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.append(((by_rank[int(keys[a, 0])], sorted_table.slice(int(a), int(b - a))),
                    int(keys[a, 1]) / 1e6))
    return out


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes: what a record batch costs to move between engine
    stages (pickling a sliced table would carry its parent's whole buffers)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _records(table: pa.Table) -> list[dict]:
    return table.drop_columns(["position"]).to_pylist()


def snapshot_from_table(tenant: str, window_start: float, window_end: float, rows: pa.Table
                        ) -> WindowSnapshot:
    """``build_snapshot`` for a window's VALID rows, vectorised (a window with repeated
    (agent, time) samples takes the per-record path, which breaks those ties)."""
    n_rec = rows.num_rows
    agent = rows.column("agent_id").combine_chunks()
    calls = rows.column("calls").combine_chunks()
    dst = pc.list_flatten(calls).field("dst")
    names = pc.unique(pa.concat_arrays([agent, dst]) if len(dst) else agent)
    names = names.take(pc.array_sort_indices(names))
    code = pc.index_in(agent, value_set=names).to_numpy().astype(np.int32)
    t = rows.column("event_time").to_numpy()
    order = np.lexsort((t, code))
    sc, st = code[order], t[order]
    if n_rec > 1 and bool(np.any((sc[1:] == sc[:-1]) & (st[1:] == st[:-1]))):
        return build_snapshot(tenant, window_start, window_end, _records(rows))
    values = np.column_stack([rows.column(m).to_numpy()[order] for m in METRICS]).reshape(-1, len(METRICS))
    sorted_calls = calls.take(pa.array(order))
    flat = pc.list_flatten(sorted_calls)
    if len(flat):
        caller = sc[pc.list_parent_indices(sorted_calls).to_numpy()]
        callee = pc.index_in(flat.field("dst"), value_set=names).to_numpy()
        call_arr = np.column_stack([caller, callee, flat.field("count").to_numpy(),
                                    flat.field("errors").to_numpy(), flat.field("latency_ms").to_numpy()]
                                   ).astype(np.float64)
    else:
        call_arr = np.zeros((0, 5))
    return snapshot_from_arrays(tenant, window_start, window_end, names.to_pylist(), sc, st - window_start,
                                values, call_arr, n_rec, 0)


def simulated_table(sc) -> tuple[pa.Table, dict]:
    """A simulator scenario's whole telemetry as one TELEMETRY table, and its labels document."""
    from pipelines.simulation.output import tick_table

    tables = [tick_table(sc, t, tel) for t, tel in sc.ticks()]
    table = pa.concat_tables(tables) if tables else TELEMETRY.empty_table()
    return table, sc.labels_document()


__all__ = ["VALID", "VALID_CALL", "CALL_TYPE", "ColumnarResult", "parse_ndjson_bytes", "parse_table",
           "parse_file_columnar", "slice_tables", "to_ipc", "from_ipc", "snapshot_from_table",
           "simulated_table"]
