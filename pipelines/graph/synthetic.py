"""Synthetic window snapshots of large fleets, straight in numpy (tests and bench of the
graph sink, where building 100,000-agent windows from telemetry records would dominate)."""

from __future__ import annotations

import numpy as np

from pipelines.windowing import WindowSnapshot
from schemas.arrow import METRICS


def fleet_windows(n_agents: int, n_windows: int, change_frac: float = 0.05, fanout: int = 2,
                  tenant: str = "acme", t0: float = 1_767_225_600.0, size_s: float = 10.0,
                  seed: int = 0, stressed_frac: float = 0.01) -> list[WindowSnapshot]:
    """``n_windows`` consecutive snapshots of one fleet: a fixed call graph (``fanout``
    callees per agent); between windows a ``change_frac`` share of agents and edges changes
    its values well beyond any small epsilon, the rest stays exactly the same."""
    rng = np.random.default_rng(seed)
    width = len(str(n_agents - 1))
    agents = [f"a{i:0{width}d}" for i in range(n_agents)]
    src = np.repeat(np.arange(n_agents, dtype=np.int32), fanout)
    dst = rng.integers(0, n_agents, len(src)).astype(np.int32)
    keep = src != dst
    key = np.unique(src[keep].astype(np.int64) * n_agents + dst[keep])
    src, dst = (key // n_agents).astype(np.int32), (key % n_agents).astype(np.int32)
    metrics = np.column_stack([rng.uniform(0, 0.05, n_agents) if m == "error_rate"
                               else rng.uniform(1, 100, n_agents) for m in METRICS])
    metrics[:, METRICS.index("request_count")] = rng.integers(10, 1000, n_agents)
    count = rng.integers(1, 100, len(src)).astype(np.int64)
    errors = np.zeros(len(src), np.int64)
    latency = rng.uniform(5, 40, len(src))
    out = []
    for w in range(n_windows):
        if w:
            metrics = metrics.copy()
            moved = rng.random(n_agents) < change_frac
            metrics[moved, METRICS.index("request_count")] *= 2
            count, latency = count.copy(), latency.copy()
            moved_e = rng.random(len(src)) < change_frac
            count[moved_e] = count[moved_e] * 2 + 1
        errors = np.zeros(len(src), np.int64)
        hot = rng.random(len(src)) < stressed_frac
        errors[hot] = count[hot]  # a few failing links: something to implicate
        start = t0 + w * size_s
        out.append(WindowSnapshot(
            tenant=tenant, window_start=start, window_end=start + size_s, agents=agents,
            n_samples=np.full(n_agents, 10, np.int32), metrics=metrics, edge_src=src, edge_dst=dst,
            edge_count=count, edge_errors=errors, edge_latency_ms=latency,
            sample_agent=np.zeros(0, np.int32), sample_offset_s=np.zeros(0),
            sample_values=np.zeros((0, len(METRICS))), n_records=10 * n_agents))
    return out
