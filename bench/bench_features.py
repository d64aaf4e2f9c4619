"""Feature stage cost per window vs fleet size, one core, and the naive dense baseline.

For windows of 100 ... 100,000 agents on two graph families (random sparse call graphs of
mean degree 6, clustered ring lattices of degree 6) it times the whole feature stage for
one window (stress filtration from the snapshot's edges, co-movement cloud, diagram and
classic features, stability against the previous window) and, where the dense matrix
fits, ripser on the dense distance matrix of the same stress filtration (the naive
approach), reporting naive / ours for the persistent homology of the call graph. Times are
the best of several runs after a warm-up window of the same size (the first window of a
new size pays for memory the PH library then reuses: ~1.9 s instead of ~0.35 s for the
stress diagrams at 100,000 agents).
Targets (issue 3): 1,000 agents < 50 ms; 100,000 agents < 1.5 s.

    python bench/bench_features.py [--sizes 100,300,1000,10000,100000] [--naive-max 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.topology.features import FeatureExtractor  # noqa: E402
from pipelines.topology.filtrations import CoMovementCloud, StressFiltration, persistence  # noqa: E402
from pipelines.topology.synthetic import ring_lattice, snapshot_from_edges, sparse_call_graph  # noqa: E402

TARGETS_MS = {1000: 50.0, 100_000: 1500.0}


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def naive_dense(snap) -> None:
    u, v, w = StressFiltration().edge_values(snap)
    n = len(snap.agents)
    d = np.full((n, n), np.inf)
    np.fill_diagonal(d, 0.0)
    d[u, v] = d[v, u] = w
    persistence(d, distance_matrix=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,300,1000,10000,100000")
    ap.add_argument("--naive-max", type=int, default=300,
                    help="largest size for the dense baseline (300: ~35 s; it grows like n^3.5)")
    ap.add_argument("--backend", default="giotto", choices=("ripser", "giotto"))
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    fx = FeatureExtractor(stress=StressFiltration(backend=a.backend),
                          comove=CoMovementCloud(backend=a.backend))
    print(f"feature-stage benchmark, backend {a.backend}, one core, {platform.machine()}, "
          f"Python {platform.python_version()}")
    print(f"  {'graph':<12}{'agents':>8}{'links':>9}{'stage ms':>10}{'stress PH ms':>14}"
          f"{'naive dense ms':>16}{'naive/ours':>12}  target")
    for family in ("sparse", "ring"):
        for n in (int(x) for x in a.sizes.split(",")):
            rng = np.random.default_rng(n)
            edges = sparse_call_graph(n, 6.0, rng) if family == "sparse" else ring_lattice(n, 6)
            prev_snap = snapshot_from_edges(edges, n, np.random.default_rng(1), stressed=0.05)
            snap = snapshot_from_edges(edges, n, np.random.default_rng(2), stressed=0.1)
            prev = fx.window(prev_snap)  # also the warm-up: a long-running job is warm
            repeat = 5 if n <= 10_000 else 3
            stage = best_of(lambda p=prev, s=snap: fx.sequence(p, fx.window(s)), repeat)
            ph = best_of(lambda s=snap: fx.stress.diagrams(s), repeat)
            naive = best_of(lambda s=snap: naive_dense(s), 1 if n > 1000 else 3) if n <= a.naive_max else None
            target = TARGETS_MS.get(n)
            verdict = "" if target is None else f"< {target:.0f} ms: {'yes' if stage < target else 'NO'}"
            print(f"  {family:<12}{n:>8}{len(edges):>9}{stage:>10.1f}{ph:>14.1f}"
                  f"{(f'{naive:.1f}' if naive is not None else 'n/a'):>16}"
                  f"{(f'{naive / ph:.1f}x' if naive is not None else ''):>12}  {verdict}")


if __name__ == "__main__":
    main()
