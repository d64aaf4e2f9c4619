"""Synthetic WindowSnapshots of a given call graph, for benchmarks and property tests."""

from __future__ import annotations

import networkx as nx
import numpy as np

from pipelines.windowing import WindowSnapshot
from schemas.arrow import METRICS


def sparse_call_graph(n: int, mean_degree: float, rng: np.random.Generator) -> np.ndarray:
    """Directed edges (E, 2) of a random graph with about ``mean_degree`` links per agent."""
    m = int(n * mean_degree / 2)
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = src != dst
    edges = np.unique(np.column_stack([src[keep], dst[keep]]), axis=0)
    return edges


def ring_lattice(n: int, k: int = 6) -> np.ndarray:
    """Clustered ring lattice (Watts-Strogatz with p = 0): each agent calls its k/2 next."""
    idx = np.arange(n)
    return np.concatenate([np.column_stack([idx, (idx + j) % n]) for j in range(1, k // 2 + 1)])


def snapshot_from_edges(edges: np.ndarray, n: int, rng: np.random.Generator, n_bins: int = 10,
                        stressed: float = 0.1, names: list[str] | None = None,
                        tenant: str = "synthetic", start: float = 0.0) -> WindowSnapshot:
    """A window over ``n_bins`` one-second ticks: every agent reports each tick, call counts
    and errors on ``edges``, a fraction ``stressed`` of links failing and slow."""
    names = names if names is not None else [f"a{i:06d}" for i in range(n)]
    order = np.argsort(names)  # agents sorted by name, like build_snapshot
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    e = len(edges)
    bad = rng.random(e) < stressed
    count = rng.integers(10, 200, e)
    errors = np.where(bad, (count * rng.uniform(0.3, 1.0, e)).astype(np.int64), rng.binomial(count, 0.01))
    latency = np.where(bad, rng.uniform(300, 1500, e), rng.uniform(5, 60, e))
    src, dst = rank[edges[:, 0]].astype(np.int32), rank[edges[:, 1]].astype(np.int32)
    ordering = np.lexsort((dst, src))
    base = rng.uniform(5, 100, n)
    drift = rng.standard_normal((n, 1)) * np.linspace(0, 1, n_bins)[None, :]
    series = base[:, None] * (1 + 0.2 * drift + 0.05 * rng.standard_normal((n, n_bins)))
    values = np.zeros((n * n_bins, len(METRICS)))
    values[:, METRICS.index("latency_p50_ms")] = series.ravel() / 2
    values[:, METRICS.index("latency_p99_ms")] = series.ravel()
    values[:, METRICS.index("error_rate")] = rng.uniform(0, 0.05, n * n_bins)
    values[:, METRICS.index("request_count")] = rng.integers(50, 500, n * n_bins)
    values[:, METRICS.index("cpu")] = rng.uniform(0.1, 0.9, n * n_bins)
    values[:, METRICS.index("memory")] = rng.uniform(0.1, 0.9, n * n_bins)
    agent = np.repeat(rank, n_bins).astype(np.int32)
    offset = np.tile(np.arange(n_bins, dtype=float), n)
    s = np.lexsort((offset, agent))
    metrics = np.zeros((n, len(METRICS)))
    np.add.at(metrics, agent, values)
    metrics /= n_bins
    metrics[:, METRICS.index("request_count")] *= n_bins
    return WindowSnapshot(
        tenant=tenant, window_start=start, window_end=start + n_bins,
        agents=sorted(names), n_samples=np.full(n, n_bins, np.int32), metrics=metrics,
        edge_src=src[ordering], edge_dst=dst[ordering], edge_count=count[ordering].astype(np.int64),
        edge_errors=errors[ordering].astype(np.int64), edge_latency_ms=latency[ordering],
        sample_agent=agent[s], sample_offset_s=offset[s], sample_values=values[s],
        n_records=n * n_bins)


def graph_edges(g: nx.Graph) -> np.ndarray:
    return np.asarray(list(g.edges()), dtype=np.int64).reshape(-1, 2)
