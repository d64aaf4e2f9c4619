"""One (tenant, window) from Flink SQL's per-agent and per-edge window aggregates.

Pure numpy, no Flink imports. The result equals ``build_snapshot`` over the window's
records: samples sorted by (agent, time), a repeated (agent, time) kept once (the smallest
by metric values), calls summed per edge. Without duplicates the edges are the SQL
aggregates; with duplicates they are rebuilt from the calls of the samples kept, since a
dropped duplicate's calls must not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from pipelines.windowing import WindowSnapshot, snapshot_from_arrays
from schemas.arrow import METRICS


@dataclass(frozen=True)
class AgentRow:
    """One agent's samples in one window (arrays in any order)."""

    agent: str
    event_time: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]  # one tuple per metric (METRICS order), per sample
    calls: tuple[str, ...]  # each sample's calls as canonical JSON


@dataclass(frozen=True)
class EdgeRow:
    """One (caller, callee) edge in one window: sums over the calls."""

    src: str
    dst: str
    count: int
    errors: int
    latency_w: float  # sum of count * latency
    latency_sum: float
    n: int  # calls entries


def _unique_samples(row: AgentRow) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(event times, values (K, M), kept sample indices), sorted by time, duplicates removed."""
    et = np.asarray(row.event_time, dtype=np.float64)
    vals = np.asarray(row.values, dtype=np.float64).T.reshape(len(et), len(METRICS))
    order = np.argsort(et, kind="stable")
    if len(np.unique(et)) == len(et):
        return et[order], vals[order], order.tolist()
    kept: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and et[order[j + 1]] == et[order[i]]:
            j += 1
        group = order[i:j + 1].tolist()
        kept.append(min(group, key=lambda k: (tuple(vals[k]), row.calls[k])))
        i = j + 1
    return et[kept], vals[kept], kept


def fresh_count(event_times: list[float], window_start_ms: int, size_ms: int, slide_ms: int) -> int:
    """Records whose earliest window is this one (each record counts once over all windows)."""
    first = window_start_ms + size_ms - slide_ms
    return sum(1 for t in event_times if math.floor(t * 1000) >= first)


def to_snapshot(tenant: str, window_start_ms: int, window_end_ms: int, agents: list[AgentRow],
                edges: list[EdgeRow]) -> WindowSnapshot:
    """The WindowSnapshot of one (tenant, window)."""
    agents = sorted(agents, key=lambda a: a.agent)
    per_agent = [_unique_samples(a) for a in agents]
    n_records = sum(len(a.event_time) for a in agents)
    n_unique = sum(len(et) for et, _, _ in per_agent)
    dup = n_unique < n_records
    if dup:  # rebuild the edges from the samples kept
        raw = [(a.agent, c) for a, (_, _, kept) in zip(agents, per_agent)
               for k in kept for c in orjson.loads(a.calls[k])]
        dsts = {c["dst"] for _, c in raw}
    else:
        dsts = {e.dst for e in edges}
    names = sorted({a.agent for a in agents} | dsts)
    index = {a: i for i, a in enumerate(names)}
    start = window_start_ms / 1000
    sample_agent = np.concatenate([np.full(len(et), index[a.agent], np.int32)
                                   for a, (et, _, _) in zip(agents, per_agent)] or [np.zeros(0, np.int32)])
    offsets = np.concatenate([et - start for et, _, _ in per_agent] or [np.zeros(0)])
    values = np.concatenate([v for _, v, _ in per_agent] or [np.zeros((0, len(METRICS)))])
    if dup:
        calls = np.array([(index[s], index[c["dst"]], c["count"], c["errors"], c["latency_ms"])
                          for s, c in raw], dtype=np.float64).reshape(-1, 5)
    else:
        calls = np.array([(index[e.src], index[e.dst], e.count, e.errors,
                           e.latency_w / e.count if e.count > 0 else e.latency_sum / e.n)
                          for e in sorted(edges, key=lambda e: (index[e.src], index[e.dst]))],
                         dtype=np.float64).reshape(-1, 5)
    return snapshot_from_arrays(tenant, start, window_end_ms / 1000, names, sample_agent, offsets,
                                values, calls, n_records, n_records - n_unique)
