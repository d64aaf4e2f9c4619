"""Summaries of persistence diagrams: Betti curves, persistence totals, entropy, counts
above a noise level, and the Wasserstein distance between consecutive diagrams."""

from __future__ import annotations

import numpy as np


def finite(dgm: np.ndarray) -> np.ndarray:
    return dgm[np.isfinite(dgm[:, 1])] if len(dgm) else dgm


def betti_curve(dgm: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of bars alive at each threshold: birth <= t < death."""
    if len(dgm) == 0:
        return np.zeros(len(thresholds))
    b, d = dgm[:, 0][:, None], dgm[:, 1][:, None]
    return ((b <= thresholds[None, :]) & (thresholds[None, :] < d)).sum(axis=0).astype(float)


def lifetimes(dgm: np.ndarray) -> np.ndarray:
    f = finite(dgm)
    return f[:, 1] - f[:, 0] if len(f) else np.zeros(0)


def persistence_entropy(life: np.ndarray) -> float:
    """Shannon entropy of the lifetimes as a distribution (0 for fewer than two bars)."""
    life = life[life > 0]
    if len(life) < 2:
        return 0.0
    p = life / life.sum()
    return float(-(p * np.log(p)).sum())


def summary(dgm: np.ndarray, thresholds: np.ndarray, noise: float, scale: float) -> list[float]:
    """[betti curve / scale ..., total persistence / scale, max persistence, entropy,
    bars above noise / scale] over finite bars (infinite bars live in the Betti curve)."""
    life = lifetimes(dgm)
    return [*(betti_curve(dgm, thresholds) / scale),
            float(life.sum()) / scale,
            float(life.max(initial=0.0)),
            persistence_entropy(life),
            float((life > noise).sum()) / scale]


def summary_names(prefix: str, thresholds: np.ndarray) -> list[str]:
    return [*(f"{prefix}_betti_t{t:g}" for t in thresholds), f"{prefix}_total_persistence",
            f"{prefix}_max_persistence", f"{prefix}_entropy", f"{prefix}_bars_above_noise"]


def top_bars(dgm: np.ndarray, k: int, cap: float) -> np.ndarray:
    """The ``k`` most persistent bars, infinite deaths capped at ``cap``."""
    if len(dgm) == 0:
        return np.zeros((0, 2))
    d = dgm.copy()
    d[:, 1] = np.minimum(d[:, 1], cap)
    life = d[:, 1] - d[:, 0]
    keep = np.argsort(-life, kind="stable")[:k]
    return d[keep]


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein distance between two diagrams with the Euclidean ground metric: the
    cheapest matching of their finite points, where any point may instead go to the
    diagonal at its distance (death - birth) / sqrt(2). An empty diagram counts as one point
    at the origin (as persim does, so values match the features the model was trained on).
    Solved exactly as an assignment problem over the (M + N) x (M + N) cost matrix."""
    from scipy.optimize import linear_sum_assignment

    a, b = a.reshape(-1, 2), b.reshape(-1, 2)
    if len(a) == 0 and len(b) == 0:
        return 0.0
    a, b = a[np.isfinite(a[:, 1])], b[np.isfinite(b[:, 1])]
    a = a if len(a) else np.zeros((1, 2))
    b = b if len(b) else np.zeros((1, 2))
    m, n = len(a), len(b)
    cost = np.zeros((m + n, m + n))
    cost[:m, :n] = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    cost[:m, n:] = np.inf
    cost[m:, :n] = np.inf
    cost[np.arange(m), n + np.arange(m)] = (a[:, 1] - a[:, 0]) / np.sqrt(2.0)
    cost[m + np.arange(n), np.arange(n)] = (b[:, 1] - b[:, 0]) / np.sqrt(2.0)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())
