"""Where to act: does the ranked list of services name the ones that failed first? (issue 18 item 2)

Simulated scenarios (all three mechanisms, layered and scale-free graphs); for every cascade
episode the ground truth is ``first_failed`` over the per-tick health of every agent (the
label rule, ``fleet.unhealthy`` at the physics timeout, root agents included) from the
trigger to the episode's end: an agent *fails* when it turns unhealthy for ``--persist-s``
seconds in a row (default 3 s, so that a one-tick blip minutes before the cascade - common in
retry storms, where many agents hover at the threshold - does not count; ``--persist-s 1`` is
the literal earliest unhealthy tick), and the truth is the services of the agents that fail
within ``--truth-s`` (5 s) of the first failure.
Each episode is localised at two 10 s tumbling windows: the last one closing at or before the
onset (``last``) and the one closing 30 s earlier (``early``; only when it closes after the
trigger). Windows are built as the backtest builds them (tick tables -> ``parse_table`` ->
``snapshot_from_table``). Three rankers: ``rank_targets`` with the stress filtration
(``topology``), without it (``graph``: the ablation), and ``rank_baseline`` (own error rate
and p99 alone). Figures: recall@1, recall@5, precision@5 of the ranked *services*, per
mechanism and overall, with percentile bootstrap intervals over episodes.

    .venv/bin/python bench/bench_localisation.py --seeds 0-47 --agents 60,100,150

Scoring weights were chosen on seeds 100-147 (``--seeds 100-147``); the default seeds differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pipelines.backtest.columnar import parse_table, snapshot_from_table  # noqa: E402
from pipelines.incidents.localise import (  # noqa: E402
    first_failed,
    precision_at,
    rank_baseline,
    rank_targets,
    recall_at,
    services_ranked,
)
from pipelines.simulation.fleet import unhealthy  # noqa: E402
from pipelines.simulation.output import tick_table  # noqa: E402
from pipelines.simulation.scenario import MECHANISMS, Scenario, ScenarioConfig  # noqa: E402
from pipelines.windowing import WindowSnapshot  # noqa: E402

WINDOW_S = 10.0
EARLY_S = 30.0
RANKERS = ("topology", "graph", "baseline")
POINTS = ("last", "early")


@dataclass
class Case:
    """One cascade episode localised at one evaluation point."""

    seed: int
    graph: str
    n_agents: int
    mechanism: str
    point: str
    snap: WindowSnapshot
    truth: frozenset[int]  # services that failed first
    service: dict[str, int]  # agent -> service


def _snapshot(sc: Scenario, tables: list[pa.Table], end: float) -> WindowSnapshot:
    """The tumbling window closing at ``end`` (epoch s), built from the tick tables."""
    k1 = int(round((end - sc.cfg.start_epoch_s) / sc.cfg.tick_s))
    k0 = max(0, k1 - int(round(WINDOW_S / sc.cfg.tick_s)))
    valid = parse_table(pa.concat_tables(tables[k0:k1]), "sim").table
    return snapshot_from_table(sc.cfg.tenant, end - WINDOW_S, end, valid)


def scenario_cases(cfg: ScenarioConfig, truth_s: float, persist_s: float) -> list[Case]:
    """Run one scenario; a ``Case`` per cascade episode and evaluation point."""
    sc = Scenario(cfg)
    tables, sick = [], []
    for epoch_s, tel in sc.ticks():
        tables.append(tick_table(sc, epoch_s, tel))
        sick.append(unhealthy(tel["error_rate"], tel["latency_p99_ms"], sc.fleet.physics.timeout))
    sick_m = np.asarray(sick)
    service = dict(zip(sc.agents, sc.fleet.service.tolist()))
    tick, t0 = cfg.tick_s, cfg.start_epoch_s
    out = []
    for lb, ep in zip(sc.labels, sc.episodes):
        if not lb.cascade:
            continue
        # from the trigger on (or from the onset, when a busy hour tipped the fleet first)
        k0 = int(round(min(ep.trigger_s, lb.onset - t0) / tick))
        k_end = int(round(min(ep.end_s, cfg.duration_s) / tick))
        truth = first_failed(sick_m[k0:k_end], sc.fleet.service, int(round(truth_s / tick)),
                             max(1, int(round(persist_s / tick))))
        if not truth:
            continue
        last = np.floor((lb.onset - t0) / WINDOW_S) * WINDOW_S + t0
        for point, end in (("last", last), ("early", last - EARLY_S)):
            if end - t0 < WINDOW_S or (point == "early" and end <= lb.trigger_time):
                continue
            out.append(Case(cfg.seed, cfg.graph, cfg.n_agents, lb.mechanism, point,
                            _snapshot(sc, tables, end), frozenset(truth), service))
    return out


def score_case(case: Case, k: int = 5) -> dict[str, tuple[float, float, float]]:
    """(recall@1, recall@k, precision@k) of every ranker on one case."""
    n = len(case.snap.agents)
    ranked = {"topology": rank_targets(case.snap, n, use_topology=True),
              "graph": rank_targets(case.snap, n, use_topology=False),
              "baseline": rank_baseline(case.snap, n)}
    out = {}
    for name, targets in ranked.items():
        svc = services_ranked(targets, case.service.get)
        out[name] = (recall_at(svc, case.truth, 1), recall_at(svc, case.truth, k),
                     precision_at(svc, case.truth, k))
    return out


def bootstrap_mean(x: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0
                   ) -> tuple[float, float]:
    """Percentile interval of the mean of ``x`` over episodes drawn with replacement."""
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    return tuple(float(v) for v in np.percentile(means, [50 * (1 - level), 50 * (1 + level)]))


def summarise(rows: list[tuple[str, str, dict]]) -> dict:
    """Mean and 95 % interval of each figure, per point, mechanism (and all) and ranker;
    ``rows``: (mechanism, point, ``score_case``) per case."""
    out: dict = {}
    scores = [r[2] for r in rows]
    for point in POINTS:
        for mech in (*MECHANISMS, "all"):
            pick = [i for i, (m, p, _) in enumerate(rows) if p == point and mech in ("all", m)]
            if not pick:
                continue
            cell: dict = {"episodes": len(pick)}
            for name in RANKERS:
                vals = np.array([scores[i][name] for i in pick])
                cell[name] = {f: {"mean": float(vals[:, j].mean()), "ci95": bootstrap_mean(vals[:, j])}
                              for j, f in enumerate(("recall@1", "recall@5", "precision@5"))}
            out.setdefault(point, {})[mech] = cell
        pick = [i for i, (_, p, _) in enumerate(rows) if p == point]
        if pick:  # paired differences over the same episodes: what each layer adds
            out[point]["paired"] = {
                f"{a}-{b}": {f: {"mean": float(d.mean()), "ci95": bootstrap_mean(d)}
                             for j, f in ((0, "recall@1"), (1, "recall@5"))
                             for d in [np.array([scores[i][a][j] - scores[i][b][j] for i in pick])]}
                for a, b in (("topology", "graph"), ("graph", "baseline"), ("topology", "baseline"))}
    return out


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def _run(args: tuple[ScenarioConfig, float, float]) -> list[tuple[str, str, dict]]:
    return [(c.mechanism, c.point, score_case(c)) for c in scenario_cases(*args)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-47", help="a-b or comma list (tuning used 100-147)")
    ap.add_argument("--agents", default="60,100,150", help="comma list, cycled over the seeds")
    ap.add_argument("--graphs", default="layered,scale_free")
    ap.add_argument("--duration", type=float, default=1200.0)
    ap.add_argument("--truth-s", type=float, default=5.0, help="first-failed window after the first failure")
    ap.add_argument("--persist-s", type=float, default=3.0, help="unhealthy this long in a row = failed")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    agents = [int(x) for x in a.agents.split(",")]
    configs = [ScenarioConfig(n_agents=agents[i % len(agents)], duration_s=a.duration, seed=s, graph=g)
               for i, s in enumerate(_seeds(a.seeds)) for g in a.graphs.split(",")]
    t0 = time.perf_counter()
    jobs = [(c, a.truth_s, a.persist_s) for c in configs]
    if a.workers > 1:
        with ProcessPoolExecutor(a.workers) as pool:
            results = list(pool.map(_run, jobs))
    else:
        results = [_run(j) for j in jobs]
    rows = [r for rs in results for r in rs]
    summary = summarise(rows)
    print(f"{len(configs)} scenarios, {sum(p == 'last' for _, p, _ in rows)} cascade episodes, "
          f"truth = services failing (unhealthy {a.persist_s:.0f} s running) in the first {a.truth_s:.0f} s; "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'point':6} {'mechanism':20} {'n':>3}  " + "  ".join(f"{r:>27}" for r in RANKERS))
    print(f"{'':6} {'':20} {'':>3}  " + "  ".join(f"{'r@1   r@5 [95% CI]    p@5':>27}" for _ in RANKERS))
    for point, by_mech in summary.items():
        for mech, cell in by_mech.items():
            if mech == "paired":
                continue
            row = "  ".join(
                f"{cell[r]['recall@1']['mean']:.2f}  {cell[r]['recall@5']['mean']:.2f} "
                f"[{cell[r]['recall@5']['ci95'][0]:.2f},{cell[r]['recall@5']['ci95'][1]:.2f}]  "
                f"{cell[r]['precision@5']['mean']:.2f}" for r in RANKERS)
            print(f"{point:6} {mech:20} {cell['episodes']:>3}  {row}")
    for point, by_mech in summary.items():
        print(f"paired differences at {point}: " + "; ".join(
            f"{pair} r@5 {d['recall@5']['mean']:+.3f} [{d['recall@5']['ci95'][0]:+.3f},"
            f"{d['recall@5']['ci95'][1]:+.3f}] r@1 {d['recall@1']['mean']:+.3f}"
            for pair, d in by_mech["paired"].items()))
    doc = {"bench": "localisation", "seeds": a.seeds, "agents": agents, "graphs": a.graphs,
           "duration_s": a.duration, "truth_s": a.truth_s, "persist_s": a.persist_s, "results": summary}
    print(json.dumps(doc))
    return doc


if __name__ == "__main__":
    main()
