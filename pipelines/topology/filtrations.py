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
    point 0: the sequence ``ripser``'s ``n_perm`` subsampling takes (a test checks it), in
    plain numpy with one matrix-vector product per step instead of one scikit-learn call
    per point (~1 ms each)."""
    k = min(k, len(points))
    idx = np.zeros(k, dtype=np.int64)
    points = np.ascontiguousarray(points, dtype=float)
    sq = (points * points).sum(axis=1)

    def dist2(j: int) -> np.ndarray:  # |x - p_j|^2 for every x, in place
        out = points @ points[j]
        out *= -2.0
        out += sq
        out += sq[j]
        return out

    d = dist2(0)
    for i in range(1, k):
        j = int(np.argmax(d))
        idx[i] = j
        np.minimum(d, dist2(j), out=d)
    return idx


def canonical_first(points: np.ndarray) -> np.ndarray:
    """``points`` reordered so that row 0 is the lexicographically largest row: a start
    for the greedy permutation that does not depend on how agents are labelled."""
    cand = np.arange(len(points))
    for c in range(points.shape[1]):
        col = points[cand, c]
        cand = cand[col == col.max()]
        if len(cand) == 1:
            break
    first = int(cand[0])
    order = np.arange(len(points))
    order[[0, first]] = order[[first, 0]]
    return points[order]


def persistence(dist, *, distance_matrix: bool, backend: str = "ripser", n_perm: int | None = None,
                thresh: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """H0 and H1 of a Rips filtration (sparse or dense distance matrix, or point cloud).

    ``n_perm`` (point clouds only) keeps the first ``n_perm`` points of ripser's greedy
    (furthest point) permutation, starting from the first point."""
    if n_perm:
        if distance_matrix:
            raise ValueError("greedy subsampling is for point clouds here")
        dist = dist[greedy_permutation(dist, n_perm)]
    if backend == "ripser":
        from ripser import ripser

        dgms = ripser(dist, maxdim=1, distance_matrix=distance_matrix, thresh=thresh)["dgms"]
    elif backend == "giotto":
        from gph import ripser_parallel

        metric = "precomputed" if distance_matrix else "euclidean"
        dgms = ripser_parallel(dist, maxdim=1, metric=metric, n_threads=1, thresh=thresh)["dgms"]
    else:
        raise ValueError(f"unknown persistence backend {backend!r}; use 'ripser' or 'giotto'")
    return np.asarray(dgms[0], float).reshape(-1, 2), np.asarray(dgms[1], float).reshape(-1, 2)


def sample_bins(snap: WindowSnapshot, bin_s: float) -> tuple[np.ndarray, int]:
    """Each sample's time bin in the window, and the number of bins."""
    n_bins = max(1, int(np.ceil((snap.window_end - snap.window_start) / bin_s)))
    col = np.clip((snap.sample_offset_s // bin_s).astype(np.int64), 0, n_bins - 1)
    return col, n_bins


@dataclass(frozen=True)
class StressFiltration:
    """Edge value = 1 - stress, stress = max(error share, latency inflation), both in [0, 1].

    Latency inflation is 0 at ``latency_ref_ms`` or below and 1 at ``timeout_ms`` or above,
    log-linear between. Edges without calls in the window are left out; both directions of
    a link are merged, keeping the more stressed. Vertices enter at 0.
    """

    latency_ref_ms: float = 50.0
    timeout_ms: float = 1000.0
    backend: str = "giotto"  # giotto-ph: same diagrams as ripser, faster (bench_features)

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
        return self.diagrams_of(len(snap.agents), *self.edge_values(snap))

    def transform(self, snaps: list[WindowSnapshot]) -> list[Diagrams]:
        """scikit-learn style: one Diagrams per snapshot; nothing is fitted."""
        return [self.diagrams(s) for s in snaps]

    def diagrams_of(self, n: int, u: np.ndarray, v: np.ndarray, value: np.ndarray) -> Diagrams:
        """Diagrams of the graph on ``n`` vertices with links (u, v) entering at ``value``."""
        if n == 0:
            return Diagrams.empty()
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
    subsampled with ripser's greedy permutation, from a canonical (label-free) start.
    Links longer than ``max_distance`` never enter (bars alive there are infinite).
    """

    metric: str = "latency_p99_ms"
    max_distance: float = 1.0  # in 1 - rho: only positively correlated agents link
    bin_s: float = 1.0
    min_samples: int = 3
    max_points: int = 100
    backend: str = "giotto"  # giotto-ph: same diagrams as ripser, faster (bench_features)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {METRICS}")
        if self.max_points < 2 or self.min_samples < 2 or self.bin_s <= 0:
            raise ValueError("need max_points >= 2, min_samples >= 2 and bin_s > 0")

    def standardized_series(self, snap: WindowSnapshot, bins: tuple[np.ndarray, int] | None = None
                            ) -> np.ndarray:
        """(agents with usable series, bins) matrix of z-scored series (unit norm).
        ``bins``: the samples' bins, when the caller already has them (``sample_bins``)."""
        if len(snap.sample_agent) == 0:
            return np.zeros((0, 0))
        col, n_bins = bins if bins is not None else sample_bins(snap, self.bin_s)
        vals = snap.sample_values[:, METRICS.index(self.metric)]
        n = len(snap.agents)
        ok = np.isfinite(vals)
        cell = snap.sample_agent[ok].astype(np.int64) * n_bins + col[ok]
        sums = np.bincount(cell, vals[ok], minlength=n * n_bins).reshape(n, n_bins)
        cnt = np.bincount(cell, minlength=n * n_bins).reshape(n, n_bins)
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
        return self.diagrams_of(self.standardized_series(snap))

    def transform(self, snaps: list[WindowSnapshot]) -> list[Diagrams]:
        """scikit-learn style: one Diagrams per snapshot; nothing is fitted."""
        return [self.diagrams(s) for s in snaps]

    def diagrams_of(self, z: np.ndarray) -> Diagrams:
        """Diagrams of standardised series (rows), in 1 - rho units."""
        m = len(z)
        if m == 0:
            return Diagrams(np.zeros((0, 2)), np.zeros((0, 2)), 0, 0)
        subsample = m > self.max_points
        if subsample:
            z = canonical_first(z)
        h0, h1 = persistence(z, distance_matrix=False, backend=self.backend,
                             n_perm=self.max_points if subsample else None,
                             thresh=float(np.sqrt(2.0 * self.max_distance)))
        to_rho = lambda d: np.where(np.isfinite(d), d * d / 2.0, d)  # noqa: E731
        return Diagrams(to_rho(h0), to_rho(h1), min(m, self.max_points), m, subsample)
