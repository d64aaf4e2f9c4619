"""One (tenant, window) from the columns the Flink job's windower hands over.

Pure numpy and orjson, no Flink imports. The JVM packs each accepted record
(``TelemetryParser.pack``) and turns a closed window's records into columns (``WindowRows``):
``heads``, little-endian doubles, the records' event time and 8 metrics then their calls'
count, errors and latency; ``meta``, the close time, counts, int32 columns (each record's agent
and number of calls, each call's dst, as indices into the window's distinct names), the names
as one JSON array and, for the records that share their (agent, event time), their calls as
written. The result equals ``build_snapshot`` over the window's records: samples sorted by
(agent, time), a repeated (agent, time) kept once (the smallest by content, as
``build_snapshot`` breaks ties), calls of the samples kept summed per edge.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from pipelines.windowing import WindowSnapshot, snapshot_from_arrays
from schemas.arrow import METRICS

HEAD = 8 * (1 + len(METRICS))  # bytes of a record's doubles
META_HEADER = struct.Struct("<qqiiii")  # closed, built (ms), records, calls, bytes of names, of duplicates


def pack(record: dict) -> bytes:
    """A parsed record (``parse_line``) packed as the JVM parser packs it (tests, tools); the
    JVM keeps the calls as written, this writes them with orjson."""
    calls = record["calls"]
    out = [struct.pack(f"<{1 + len(METRICS)}di", record["event_time"], *(float(record[m]) for m in METRICS),
                       len(calls))]
    out += [struct.pack("<3d", c["count"], c["errors"], c["latency_ms"]) for c in calls]
    for name in [record["agent_id"], *(c["dst"] for c in calls)]:
        lit = orjson.dumps(name)
        out.append(struct.pack("<i", len(lit)) + lit)
    return b"".join(out) + orjson.dumps(calls)


def join(recs: Sequence[bytes], closed_ms: int = 0) -> tuple[bytes, bytes]:
    """Packed records as the JVM's ``WindowRows`` hands a window over (tests, tools)."""
    heads, call_heads, agent, n_calls, dst, dups = [], [], [], [], [], {}
    index: dict[bytes, int] = {}
    for i, r in enumerate(recs):
        m = struct.unpack_from("<i", r, HEAD)[0]
        heads.append(r[:HEAD])
        call_heads.append(r[HEAD + 4:HEAD + 4 + 24 * m])
        p, ids = HEAD + 4 + 24 * m, []
        for _ in range(m + 1):
            n = struct.unpack_from("<i", r, p)[0]
            ids.append(index.setdefault(r[p + 4:p + 4 + n], len(index)))
            p += 4 + n
        agent.append(ids[0])
        n_calls.append(m)
        dst += ids[1:]
        et = struct.unpack_from("<d", r)[0] + 0.0
        dups.setdefault((ids[0], et), []).append((i, r[p:]))
    names = b"[" + b",".join(index) + b"]"
    shared = sorted(x for group in dups.values() if len(group) > 1 for x in group)
    dup = b"[" + b",".join(b"[%d,%s]" % x for x in shared) + b"]"
    cols = np.array(agent + n_calls + dst, "<i4").tobytes()
    header = META_HEADER.pack(closed_ms, closed_ms, len(recs), len(dst), len(names), len(dup))
    meta = header + cols + names + dup
    return b"".join(heads + call_heads), meta


@dataclass(frozen=True)
class Columns:
    """A window as the JVM hands it over, decoded (arrays are views of the bytes)."""

    closed_ms: int  # wall clock when the JVM closed the window
    built_ms: int  # and when it had built these columns
    event_time: np.ndarray  # (K,)
    values: np.ndarray  # (K, M)
    agent: np.ndarray  # (K,) index into names
    n_calls: np.ndarray  # (K,)
    dst: np.ndarray  # (C,) index into names, records' calls back to back
    call_values: np.ndarray  # (C, 3) count, errors, latency_ms
    names: list[str]  # distinct agents and dsts, first-seen order
    duplicates: dict[int, list]  # record index -> its calls, for records sharing (agent, time)


def unpack(heads: bytes, meta: bytes) -> Columns:
    """The columns of a window (``WindowRows``)."""
    closed_ms, built_ms, n, c, n_names, n_dups = META_HEADER.unpack_from(meta)
    nums = np.frombuffer(heads, "<f8", n * (1 + len(METRICS))).reshape(n, 1 + len(METRICS))
    calls = np.frombuffer(heads, "<f8", 3 * c, n * HEAD).reshape(c, 3)
    cols = np.frombuffer(meta, "<i4", 2 * n + c, META_HEADER.size)
    at = META_HEADER.size + 4 * (2 * n + c)
    names = orjson.loads(meta[at:at + n_names])
    dups = dict(orjson.loads(meta[at + n_names:at + n_names + n_dups]))
    return Columns(closed_ms, built_ms, nums[:, 0], nums[:, 1:], cols[:n], cols[n:2 * n], cols[2 * n:], calls,
                   names, dups)


def jvm_times(meta: bytes) -> tuple[float, float]:
    """Wall-clock times (s) when the JVM closed the window and when it had built its columns."""
    closed_ms, built_ms = META_HEADER.unpack_from(meta)[:2]
    return closed_ms / 1000, built_ms / 1000


def fresh_count(event_times: np.ndarray, window_start_ms: int, size_ms: int, slide_ms: int) -> int:
    """Records whose earliest window is this one (each record counts once over all windows)."""
    first = window_start_ms + size_ms - slide_ms
    return int(np.count_nonzero(np.floor(np.asarray(event_times, np.float64) * 1000) >= first))


def _kept(rank: np.ndarray, et: np.ndarray, values: np.ndarray, duplicates: dict[int, list]) -> np.ndarray:
    """Indices of the samples kept, sorted by (agent, time) (``rank``: each record's agent's
    rank in name order); of a repeated (agent, time) the one ``build_snapshot`` keeps: the
    smallest by (metric values, repr(calls))."""
    order = np.lexsort((et, rank))
    a, t = rank[order], et[order]
    new = np.ones(len(order), bool)
    new[1:] = (a[1:] != a[:-1]) | (t[1:] != t[:-1])
    if new.all():
        return order
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(order))
    kept = order[starts]
    for g in np.flatnonzero(ends - starts > 1).tolist():
        group = order[starts[g]:ends[g]].tolist()
        kept[g] = min(group, key=lambda k: (tuple(values[k].tolist()), repr(duplicates[k])))
    return kept


def window_snapshot(tenant: str, window_start_ms: int, window_end_ms: int, heads: bytes,
                    meta: bytes) -> tuple[WindowSnapshot, np.ndarray]:
    """The WindowSnapshot of one (tenant, window) (``WindowRows``' columns) and the event
    times of all its records."""
    w = unpack(heads, meta)
    n_names = len(w.names)
    by_name = np.array(sorted(range(n_names), key=w.names.__getitem__), np.int64)  # code-point order
    rank = np.empty(n_names, np.int64)
    rank[by_name] = np.arange(n_names)
    et = w.event_time.astype(np.float64)
    kept = _kept(rank[w.agent], et, w.values, w.duplicates)
    # the calls of the kept records, in sample order
    first_call = np.concatenate(([0], np.cumsum(w.n_calls, dtype=np.int64)))[:-1]
    counts = w.n_calls[kept].astype(np.int64)
    ends = np.cumsum(counts)
    n_kept_calls = int(ends[-1]) if len(ends) else 0
    calls = np.repeat(first_call[kept] - (ends - counts), counts) + np.arange(n_kept_calls, dtype=np.int64)
    # names of the kept samples and their calls, renumbered in name order
    used = np.zeros(n_names, bool)
    used[w.agent[kept]] = True
    used[w.dst[calls]] = True
    new_index = np.cumsum(used[by_name]) - 1  # by rank
    names = [w.names[i] for i in by_name[used[by_name]].tolist()]
    renumber = new_index[rank].astype(np.int32)
    sample_agent = renumber[w.agent[kept]]
    table = np.empty((len(calls), 5))
    table[:, 0] = np.repeat(sample_agent, counts)
    table[:, 1] = renumber[w.dst[calls]]
    table[:, 2:] = w.call_values[calls]
    start = window_start_ms / 1000
    n = len(et)
    snap = snapshot_from_arrays(tenant, start, window_end_ms / 1000, names, sample_agent, et[kept] - start,
                                w.values[kept].astype(np.float64), table, n, n - len(kept))
    return snap, et
