"""Filtrations of a WindowSnapshot and their persistence diagrams.

Two transformers with explicit parameters and no hidden state:

- ``StressFiltration``: the call graph as a flag complex filtered by link health, so that
  stressed links (high error share, inflated latency) enter first. H0 says how stress
  clusters, H1 whether stressed links close loops (feedback and retry cycles).
- ``CoMovementCloud``: agents as points, distance 1 - correlation of their series inside
  the window (Gidea 2017). Large clouds are subsampled by ripser's greedy permutation
  (``n_perm``), and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pipelines.windowing import WindowSnapshot
from schemas.arrow import METRICS


@dataclass(frozen=True)
class Diagrams:
    """H0 and H1 persistence diagrams, (n, 2) arrays of (birth, death); death may be inf."""

    h0: np.ndarray
    h1: np.ndarray
    n_points: int  # vertices or points the complex was built on
    n_total: int  # before any subsampling
    subsampled: bool = False

    @staticmethod
    def empty() -> Diagrams:
        return Diagrams(np.zeros((0, 2)), np.zeros((0, 2)), 0, 0)


def greedy_permutation(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` points of the furthest-point (greedy) permutation from
    point 0: the same sequence as ``ripser``'s ``n_perm`` subsampling (a test checks it),
    in plain numpy instead of one scikit-learn call per point (~1 ms each)."""
    k = min(k, len(points))
    idx = np.zeros(k, dtype=np.int64)
    d = ((points - points[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        idx[i] = int(np.argmax(d))
        d = np.minimum(d, ((points - points[idx[i]]) ** 2).sum(axis=1))
    return idx


def persistence(dist, *, distance_matrix: bool, backend: str = "ripser", n_perm: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """H0 and H1 of a Rips filtration (sparse or dense distance matrix, or point cloud).

    ``n_perm`` (point clouds only) keeps the first ``n_perm`` points of ripser's greedy
    (furthest point) permutation, starting from the first point."""
    if n_perm:
        if distance_matrix:
            raise ValueError("greedy subsampling is for point clouds here")
        dist = dist[greedy_permutation(dist, n_perm)]
    if backend == "ripser":
        from ripser import ripser

        dgms = ripser(dist, maxdim=1, distance_matrix=distance_matrix)["dgms"]
    elif backend == "giotto":
        from gph import ripser_parallel

        metric = "precomputed" if distance_matrix else "euclidean"
        dgms = ripser_parallel(dist, maxdim=1, metric=metric, n_threads=1)["dgms"]
    else:
        raise ValueError(f"unknown persistence backend {backend!r}; use 'ripser' or 'giotto'")
    return np.asarray(dgms[0], float).reshape(-1, 2), np.asarray(dgms[1], float).reshape(-1, 2)


@dataclass(frozen=True)
class StressFiltration:
    """Edge value = 1 - stress, stress = max(error share, latency inflation), both in [0, 1].

    Latency inflation is 0 at ``latency_ref_ms`` or below and 1 at ``timeout_ms`` or above,
    log-linear between. Edges without calls in the window are left out; both directions of
    a link are merged, keeping the more stressed. Vertices enter at 0.
    """

    latency_ref_ms: float = 50.0
    timeout_ms: float = 1000.0
    backend: str = "ripser"

    def __post_init__(self):
        if not 0 < self.latency_ref_ms < self.timeout_ms:
            raise ValueError("need 0 < latency_ref_ms < timeout_ms")

    def edge_values(self, snap: WindowSnapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, value) per undirected link with traffic, u < v."""
        used = snap.edge_count > 0
        src, dst = snap.edge_src[used].astype(np.int64), snap.edge_dst[used].astype(np.int64)
        count = snap.edge_count[used].astype(float)
        err_share = np.clip(snap.edge_errors[used] / count, 0.0, 1.0)
        lat = np.nan_to_num(snap.edge_latency_ms[used], nan=self.timeout_ms)
        inflation = np.clip(np.log(np.maximum(lat, 1e-9) / self.latency_ref_ms)
                            / np.log(self.timeout_ms / self.latency_ref_ms), 0.0, 1.0)
        value = 1.0 - np.maximum(err_share, inflation)
        loops = src == dst
        u, v, value = np.minimum(src, dst)[~loops], np.maximum(src, dst)[~loops], value[~loops]
        if len(u) == 0:
            return u, v, value
        n = max(len(snap.agents), 1)
        key = u * n + v
        order = np.lexsort((value, key))  # per link, the smallest value (most stressed) first
        key, value = key[order], value[order]
        first = np.concatenate([[True], key[1:] != key[:-1]])
        return key[first] // n, key[first] % n, value[first]

    def diagrams(self, snap: WindowSnapshot) -> Diagrams:
        n = len(snap.agents)
        if n == 0:
            return Diagrams.empty()
        u, v, value = self.edge_values(snap)
        # ripser reads a sparse matrix as the filtration: diagonal = vertex births (0),
        # off-diagonal = edge values; a stored 0 would vanish, so shift by a tiny epsilon
        eps = 1e-12
        dist = sp.coo_matrix((value + eps, (u, v)), shape=(n, n))
        h0, h1 = persistence(dist, distance_matrix=True, backend=self.backend)
        h0 = np.where(np.isfinite(h0), np.maximum(h0 - eps, 0.0), h0)
        h1 = np.where(np.isfinite(h1), np.maximum(h1 - eps, 0.0), h1)
        return Diagrams(h0, h1, n, n)


@dataclass(frozen=True)
class CoMovementCloud:
    """Agents as points; distance = 1 - Pearson correlation of one metric's series.

    Series are binned to ``bin_s``; agents with fewer than ``min_samples`` samples or a
    constant series carry no co-movement and are left out. Computed on standardised series
    as Euclidean points (|z_i - z_j|^2 / 2 = 1 - rho_ij, a monotone change that keeps the
    persistence pairs) and reported in 1 - rho units. More than ``max_points`` agents are
    subsampled with ripser's greedy permutation, from a canonical (label-free) order.
    """

    metric: str = "latency_p99_ms"
    bin_s: float = 1.0
    min_samples: int = 3
    max_points: int = 100
    backend: str = "ripser"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {METRICS}")
        if self.max_points < 2 or self.min_samples < 2 or self.bin_s <= 0:
            raise ValueError("need max_points >= 2, min_samples >= 2 and bin_s > 0")

    def standardized_series(self, snap: WindowSnapshot) -> np.ndarray:
        """(agents with usable series, bins) matrix of z-scored series (unit norm)."""
        if len(snap.sample_agent) == 0:
            return np.zeros((0, 0))
        n_bins = max(1, int(np.ceil((snap.window_end - snap.window_start) / self.bin_s)))
        col = np.clip((snap.sample_offset_s // self.bin_s).astype(np.int64), 0, n_bins - 1)
        vals = snap.sample_values[:, METRICS.index(self.metric)]
        n = len(snap.agents)
        sums = np.zeros((n, n_bins))
        cnt = np.zeros((n, n_bins))
        ok = np.isfinite(vals)
        np.add.at(sums, (snap.sample_agent[ok], col[ok]), vals[ok])
        np.add.at(cnt, (snap.sample_agent[ok], col[ok]), 1.0)
        have = cnt > 0
        keep = have.sum(axis=1) >= self.min_samples
        series = np.divide(sums, cnt, out=np.zeros_like(sums), where=have)[keep]
        have = have[keep]
        mean = (series * have).sum(axis=1, keepdims=True) / have.sum(axis=1, keepdims=True)
        z = np.where(have, series - mean, 0.0)  # missing bins contribute nothing
        norm = np.linalg.norm(z, axis=1)
        usable = norm > 1e-12 * np.maximum(np.abs(mean[:, 0]), 1.0)
        return z[usable] / norm[usable, None]

    def diagrams(self, snap: WindowSnapshot) -> Diagrams:
        z = self.standardized_series(snap)
        m = len(z)
        if m == 0:
            return Diagrams(np.zeros((0, 2)), np.zeros((0, 2)), 0, 0)
        order = np.lexsort(z.T[::-1])  # canonical order: the greedy permutation starts here
        z = z[order]
        subsample = m > self.max_points
        h0, h1 = persistence(z, distance_matrix=False, backend=self.backend,
                             n_perm=self.max_points if subsample else None)
        to_rho = lambda d: np.where(np.isfinite(d), d * d / 2.0, d)  # noqa: E731
        return Diagrams(to_rho(h0), to_rho(h1), min(m, self.max_points), m, subsample)
