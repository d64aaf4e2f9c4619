"""How predictable is the label at all? PR-AUC of "cascade onset within the horizon" for
models that see more than AURA can, on the training family's train+validation scenarios
(never the test split), by 4-fold cross-validation over scenarios.

- ``lr``: logistic regression on the last window's features (the training baseline);
- ``gb``: gradient-boosted trees on the last window's features and their change over 1
  and 3 windows (a strong tabular model);
- ``gb, no topology``: the same without the 45 persistent-homology features (the classic
  ones only): how much the topology adds that the classic features do not carry;
- ``gb + oracle``: the same plus what only the simulator knows at the window's end
  (``Scenario.trigger_state``): which mechanism is acting, how strong the trigger is now
  (in units of its mechanism's magnitude range), how fast it is still growing, how long it
  has acted and whether it has stopped growing. The one thing left out is how far the trigger will still grow,
  which no telemetry can show.

If ``gb + oracle`` stays below a quality bar, no feature of the telemetry can reach it:
the bar asks for more than the label allows. PR-AUC is given for two assignments of the
scenarios to folds (``--fold-seeds``): their difference is the noise any row-to-row
difference must beat.

Besides the pooled PR-AUC, each model's out-of-fold scores are scored like the backtest
(``pipelines.backtest.scoring``): recall of onsets and median lead time at the lowest
threshold with at most one false alarm per fleet-hour. That threshold is chosen on the
same out-of-fold scores it is scored on, which flatters every row: an upper bound for the
backtest's bar, not an estimate of it.

    python bench/bench_label_ceiling.py [--scenarios 48] [--seed 0] [--horizon 60] [--fold-seeds 0,1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from models.train import split_scenarios  # noqa: E402
from pipelines.backtest import scoring  # noqa: E402
from pipelines.backtest.baselines import NON_TOPOLOGY, columns  # noqa: E402
from pipelines.simulation.scenario import Scenario  # noqa: E402
from pipelines.training_data import DatasetConfig, build_dataset  # noqa: E402


def with_changes(x: np.ndarray, lags=(1, 3)) -> np.ndarray:
    """Features and their change over ``lags`` windows (the first window repeated)."""
    cols = [x]
    for k in lags:
        cols.append(x - np.vstack([np.repeat(x[:1], k, axis=0), x[:-k]]))
    return np.hstack(cols)


def cross_validate(blocks: list[tuple[np.ndarray, np.ndarray]], model: str, folds: int = 4, seed: int = 0
                   ) -> list[np.ndarray]:
    """Out-of-fold scores per scenario; ``blocks`` = per scenario (features, labels)."""
    order = np.random.default_rng(seed).permutation(len(blocks))
    out: list[np.ndarray] = [np.zeros(0)] * len(blocks)
    for f in range(folds):
        held = set(order[f::folds].tolist())
        xtr = np.vstack([x for i, (x, _) in enumerate(blocks) if i not in held])
        ytr = np.concatenate([y for i, (_, y) in enumerate(blocks) if i not in held])
        if model == "lr":
            mu, sd = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
            clf = LogisticRegression(max_iter=3000, C=0.5).fit((xtr - mu) / sd, ytr)
            for i in held:
                out[i] = clf.predict_proba((blocks[i][0] - mu) / sd)[:, 1]
        else:
            clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                                 random_state=0).fit(xtr, ytr)
            for i in held:
                out[i] = clf.predict_proba(blocks[i][0])[:, 1]
    return out


def event_figures(windows: list[scoring.ScenarioWindows], scores: list[np.ndarray]) -> tuple[float, float]:
    """(event recall, median lead time s) at the lowest threshold with <= 1 false alarm per
    fleet-hour on these very scores (optimistic: chosen where it is scored)."""
    t = scoring.threshold_for_budget(windows, scores, 1.0)
    m = scoring.summarise([scoring.outcome(w, p, t) for w, p in zip(windows, scores)])
    return m["event_recall"] or 0.0, m["lead_time_s"]["median"] or 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--horizon", type=float, default=60.0, help="seconds ahead an onset counts (the label)")
    ap.add_argument("--fold-seeds", default="0,1", help="fold assignments to score PR-AUC on (comma list)")
    a = ap.parse_args()
    cfg = DatasetConfig(seed=a.seed, n_scenarios=a.scenarios, horizon_s=a.horizon)
    t0 = time.perf_counter()
    data = build_dataset(cfg)
    tr, va, _ = split_scenarios(len(data), 0.25, 0.2, 0)  # train's split; test is never read
    keep = np.concatenate([tr, va])
    configs = cfg.scenarios()
    fold_seeds = [int(v) for v in a.fold_seeds.split(",")]
    classic = columns(NON_TOPOLOGY)
    blocks: dict[str, list] = {"lr": [], "gb": [], "gb, no topology": [], "gb + oracle": []}
    windows = []  # scored like the backtest; their score is filled per window outside cascades
    for i in keep:
        s, sc = data[i], Scenario(configs[i])
        for _ in sc.ticks():  # the same run again, for its episodes
            pass
        ok = ~s.in_cascade
        cascades = [lb for lb in sc.labels if lb.cascade]
        windows.append(scoring.ScenarioWindows(
            s.tenant, "training", s.n_agents, s.graph, s.window_end, s.features,
            np.array([lb.onset for lb in cascades]), np.array([lb.end for lb in cascades]),
            np.array([lb.trigger_time for lb in sc.labels]), sc.cfg.duration_s, cfg.horizon_s))
        assert (windows[-1].label == s.label).all() and (windows[-1].in_cascade == s.in_cascade).all()
        oracle = np.array([sc.trigger_state(e - sc.cfg.start_epoch_s) for e in s.window_end])
        blocks["lr"].append((s.features[ok], s.label[ok]))
        blocks["gb"].append((with_changes(s.features)[ok], s.label[ok]))
        blocks["gb, no topology"].append((with_changes(s.features[:, classic])[ok], s.label[ok]))
        blocks["gb + oracle"].append((with_changes(np.hstack([s.features, oracle]))[ok], s.label[ok]))
    y = np.concatenate([b[1] for b in blocks["lr"]])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {len(keep)} "
          f"train+validation scenarios of DatasetConfig(seed={a.seed}, n_scenarios={a.scenarios}), "
          f"horizon {cfg.horizon_s:g} s, {len(y)} windows, positive rate {y.mean():.3f} "
          f"({time.perf_counter() - t0:.0f} s to simulate)")
    print(f"  {'':16s} {'PR-AUC':>16} {'recall at <= 1 FA/h':>20} {'median lead':>12}   (4-fold CV, pooled; "
          f"PR-AUC per fold seed {'/'.join(map(str, fold_seeds))}, event figures on the first)")
    for name, b in blocks.items():
        y_all = np.concatenate([yb for _, yb in b])
        runs = [cross_validate(b, "lr" if name == "lr" else "gb", seed=fs) for fs in fold_seeds]
        aucs = "/".join(f"{average_precision_score(y_all, np.concatenate(r)):.3f}" for r in runs)
        oof = runs[0]
        full = []  # out-of-fold scores on every window; in-cascade windows are never scored
        for w, p in zip(windows, oof):
            v = np.zeros(len(w.window_end))
            v[~w.in_cascade] = p
            full.append(v)
        recall, lead = event_figures(windows, full)
        print(f"  {name:16s} {aucs:>16} {recall:20.2f} {lead:10.0f} s", flush=True)


if __name__ == "__main__":
    main()
