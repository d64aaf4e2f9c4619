"""One (tenant, window) from the packed records the Flink job's windower buffers.

Pure numpy and orjson, no Flink imports. A packed record (``TelemetryParser.pack`` on the
JVM) is the event time and the 8 metrics as little-endian doubles, then UTF-8 JSON
``[agent_id, calls]`` with the calls exactly as written in the input line. The JVM
(``WindowRows``) hands a window over joined: the records' doubles back to back (``heads``)
and one JSON array of their ``[agent_id, calls]`` parts (``meta``). The result equals
``build_snapshot`` over the window's records: samples sorted by (agent, time), a repeated
(agent, time) kept once (the smallest by content, as ``build_snapshot`` breaks ties), calls
of the samples kept summed per edge.
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Sequence
from contextlib import contextmanager
from itertools import chain
from operator import itemgetter

import numpy as np
import orjson

from pipelines.windowing import WindowSnapshot, snapshot_from_arrays
from schemas.arrow import METRICS

HEAD = 8 * (1 + len(METRICS))  # bytes of doubles before the JSON part


def pack(record: dict) -> bytes:
    """A parsed record (``parse_line``) packed as the JVM parser packs it (tests, tools); the
    JVM copies the calls as written, this writes them with orjson."""
    head = struct.pack(f"<{1 + len(METRICS)}d", record["event_time"], *(float(record[m]) for m in METRICS))
    return head + b"[" + orjson.dumps(record["agent_id"]) + b"," + orjson.dumps(record["calls"]) + b"]"


def join(recs: Sequence[bytes]) -> tuple[bytes, bytes]:
    """Packed records joined as the JVM's ``WindowRows`` joins a window's (tests, tools)."""
    return b"".join([r[:HEAD] for r in recs]), b"[" + b",".join([r[HEAD:] for r in recs]) + b"]"


def unpack(heads: bytes, meta: bytes) -> tuple[np.ndarray, np.ndarray, list]:
    """A joined window -> (event times (K,), metric values (K, M), [agent_id, calls] per record)."""
    nums = np.frombuffer(heads, dtype="<f8").reshape(-1, 1 + len(METRICS))
    return nums[:, 0].astype(np.float64), nums[:, 1:].astype(np.float64), orjson.loads(meta)


def fresh_count(event_times: np.ndarray, window_start_ms: int, size_ms: int, slide_ms: int) -> int:
    """Records whose earliest window is this one (each record counts once over all windows)."""
    first = window_start_ms + size_ms - slide_ms
    return int(np.count_nonzero(np.floor(np.asarray(event_times, np.float64) * 1000) >= first))


def _kept(agent_idx: np.ndarray, et: np.ndarray, values: np.ndarray, meta: list) -> np.ndarray:
    """Indices of the samples kept, sorted by (agent, time); of a repeated (agent, time) the
    one ``build_snapshot`` keeps: the smallest by (metric values, repr(calls))."""
    order = np.lexsort((et, agent_idx))
    a, t = agent_idx[order], et[order]
    new = np.ones(len(order), bool)
    new[1:] = (a[1:] != a[:-1]) | (t[1:] != t[:-1])
    if new.all():
        return order
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(order))
    kept = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        group = order[s:e].tolist()
        kept.append(group[0] if e - s == 1 else
                    min(group, key=lambda k: (tuple(values[k].tolist()), repr(meta[k][1]))))
    return np.asarray(kept, dtype=np.int64)


@contextmanager
def _no_gc():
    """Pause the cyclic GC: decoding a window allocates ~3 containers per record, which
    triggers collections that scan every live object (about half the decode time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def window_snapshot(tenant: str, window_start_ms: int, window_end_ms: int, heads: bytes,
                    meta: bytes) -> tuple[WindowSnapshot, np.ndarray]:
    """The WindowSnapshot of one (tenant, window) (joined records) and the event times of all
    its records."""
    with _no_gc():
        return _window_snapshot(tenant, window_start_ms, window_end_ms, *unpack(heads, meta))


def _window_snapshot(tenant: str, window_start_ms: int, window_end_ms: int, et: np.ndarray,
                     values: np.ndarray, meta: list) -> tuple[WindowSnapshot, np.ndarray]:
    # map/itemgetter rather than generator expressions: a window has ~10^4-10^5 records
    agent_of, calls_of = list(map(itemgetter(0), meta)), list(map(itemgetter(1), meta))
    agents = sorted(set(agent_of))
    first = {a: i for i, a in enumerate(agents)}
    agent_idx = np.fromiter(map(first.__getitem__, agent_of), np.int64, len(meta))
    kept = _kept(agent_idx, et, values, meta)
    kept_calls = list(map(calls_of.__getitem__, kept.tolist()))
    calls = list(chain.from_iterable(kept_calls))  # in sample order
    dsts = list(map(itemgetter("dst"), calls))
    names = sorted(set(agents).union(dsts))
    index = {a: i for i, a in enumerate(names)}
    sample_agent = np.fromiter(map(index.__getitem__, agents), np.int32, len(agents))[agent_idx[kept]]
    table = np.empty((len(calls), 5))
    table[:, 0] = np.repeat(sample_agent, np.fromiter(map(len, kept_calls), np.int64, len(kept_calls)))
    table[:, 1] = np.fromiter(map(index.__getitem__, dsts), np.int64, len(dsts))
    if calls:
        table[:, 2:] = np.array(list(map(itemgetter("count", "errors", "latency_ms"), calls)), np.float64)
    start = window_start_ms / 1000
    snap = snapshot_from_arrays(tenant, start, window_end_ms / 1000, names, sample_agent, et[kept] - start,
                                values[kept], table, len(meta), len(meta) - len(kept))
    return snap, et

