"""How predictable is the label at all? PR-AUC of "cascade onset within the horizon" for
models that see more than AURA can, on the training family's train+validation scenarios
(never the test split), by 4-fold cross-validation over scenarios.

- ``lr``: logistic regression on the last window's features (the training baseline);
- ``gb``: gradient-boosted trees on the last window's features and their change over 1
  and 3 windows (a strong tabular model);
- ``gb + oracle``: the same plus what only the simulator knows at the window's end
  (``Scenario.trigger_state``): which mechanism is acting, how strong the trigger is now
  (in units of its mechanism's magnitude range), how fast it is still growing, how long it
  has acted and whether it has stopped growing. The one thing left out is how far the trigger will still grow,
  which no telemetry can show.

If ``gb + oracle`` stays below a quality bar, no feature of the telemetry can reach it:
the bar asks for more than the label allows.

    python bench/bench_label_ceiling.py [--scenarios 48] [--seed 0]
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
from pipelines.simulation.scenario import Scenario  # noqa: E402
from pipelines.training_data import DatasetConfig, build_dataset  # noqa: E402


def with_changes(x: np.ndarray, lags=(1, 3)) -> np.ndarray:
    """Features and their change over ``lags`` windows (the first window repeated)."""
    cols = [x]
    for k in lags:
        cols.append(x - np.vstack([np.repeat(x[:1], k, axis=0), x[:-k]]))
    return np.hstack(cols)


def cross_validate(blocks: list[tuple[np.ndarray, np.ndarray]], model: str, folds: int = 4, seed: int = 0
                   ) -> float:
    """Pooled out-of-fold PR-AUC; ``blocks`` = per scenario (features, labels)."""
    order = np.random.default_rng(seed).permutation(len(blocks))
    ys, ps = [], []
    for f in range(folds):
        held = set(order[f::folds].tolist())
        xtr = np.vstack([x for i, (x, _) in enumerate(blocks) if i not in held])
        ytr = np.concatenate([y for i, (_, y) in enumerate(blocks) if i not in held])
        xte = np.vstack([blocks[i][0] for i in sorted(held)])
        ys.append(np.concatenate([blocks[i][1] for i in sorted(held)]))
        if model == "lr":
            mu, sd = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
            clf = LogisticRegression(max_iter=3000, C=0.5).fit((xtr - mu) / sd, ytr)
            ps.append(clf.predict_proba((xte - mu) / sd)[:, 1])
        else:
            clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                                 random_state=0).fit(xtr, ytr)
            ps.append(clf.predict_proba(xte)[:, 1])
    return float(average_precision_score(np.concatenate(ys), np.concatenate(ps)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = DatasetConfig(seed=a.seed, n_scenarios=a.scenarios)
    t0 = time.perf_counter()
    data = build_dataset(cfg)
    tr, va, _ = split_scenarios(len(data), 0.25, 0.2, 0)  # train's split; test is never read
    keep = np.concatenate([tr, va])
    configs = cfg.scenarios()
    blocks: dict[str, list] = {"lr": [], "gb": [], "gb + oracle": []}
    for i in keep:
        s, sc = data[i], Scenario(configs[i])
        for _ in sc.ticks():  # the same run again, for its episodes
            pass
        ok = ~s.in_cascade
        oracle = np.array([sc.trigger_state(e - sc.cfg.start_epoch_s) for e in s.window_end])
        blocks["lr"].append((s.features[ok], s.label[ok]))
        blocks["gb"].append((with_changes(s.features)[ok], s.label[ok]))
        blocks["gb + oracle"].append((with_changes(np.hstack([s.features, oracle]))[ok], s.label[ok]))
    y = np.concatenate([b[1] for b in blocks["lr"]])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {len(keep)} "
          f"train+validation scenarios of DatasetConfig(seed={a.seed}, n_scenarios={a.scenarios}), "
          f"{len(y)} windows, positive rate {y.mean():.3f} ({time.perf_counter() - t0:.0f} s to simulate)")
    for name, b in blocks.items():
        print(f"  {name:12s} 4-fold CV PR-AUC {cross_validate(b, 'lr' if name == 'lr' else 'gb'):.3f}")


if __name__ == "__main__":
    main()
