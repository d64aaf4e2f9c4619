"""Does a model hold up on real-process fleets it was never trained on? Models scored on the
testbed corpus (``aura corpus``) beside static alert rules, as an on-call engineer counts.

For every model directory given (default: the committed model) and for static threshold
rules: the operating threshold is fitted on the corpus's *calibration* runs only (the
lowest threshold with at most ``--budget`` false alarms per quiet fleet-hour), then frozen
and applied to the *evaluation* runs, which no model was trained or tuned on. Reported per
split: false alarms per quiet fleet-hour, onsets warned between trigger and onset (at least
``--delivery`` seconds ahead: export, grace and close -> verdict), median lead, late and
missed onsets, alarms after fizzled triggers, window PR-AUC (60 s horizon) - with 90 %
bootstrap intervals over runs on evaluation. Verdicts whose status is not ``ok``
(calibrating, out of distribution) raise no alarm, as in the service.

    python bench/bench_generalisation.py [--corpus bench/corpus/testbed-v1] [--models DIR,DIR] [--budget 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.backtest.baselines import StaticThresholdRule  # noqa: E402
from pipelines.backtest.fleet_scoring import (  # noqa: E402
    fleet_outcome,
    score_fleets,
    summarise_fleet,
    threshold_for_quiet_budget,
)
from pipelines.backtest.recorded import corpus_split  # noqa: E402
from pipelines.backtest.scoring import pr_auc  # noqa: E402
from pipelines.inference import DEFAULT_MODEL_DIR, OnnxPredictor, score_tenant  # noqa: E402
from pipelines.topology.features import FeatureExtractor  # noqa: E402


def load_split(corpus: str, split: str) -> tuple[list, dict]:
    """The split's runs as scored scenarios, and per tenant its windows for the stream replay."""
    scens, windows = corpus_split(corpus, split)
    return scens, {"windows": windows}


def model_scorer(model_dir: str):
    """Scores as the stream does; a model on a subset of the features (an ablation) gets
    the columns its ``model.json`` names."""
    pred = OnnxPredictor(model_dir)
    pred.load_model()
    with open(os.path.join(model_dir, "model.json")) as fh:
        cols = [FeatureExtractor.names().index(n) for n in json.load(fh)["feature_names"]]

    def score(s, extra) -> tuple[np.ndarray, list[str]]:
        starts, ends, feats = extra["windows"][s.tenant]
        p, statuses = score_tenant(pred, starts, ends, feats[:, cols])
        return np.where(np.array(statuses) == "ok", p, 0.0), statuses
    return score


def relative_rule(model_dir: str, feature: str = "error_rate_max", sign: float = 1.0):
    """A static rule on the tenant's own baseline: how many baseline spreads ``feature``
    stands above (``sign`` -1: below) the median of the tenant's first windows (the
    committed model's calibration, so it abstains exactly where the model does)."""
    with open(os.path.join(model_dir, "model.json")) as fh:
        from pipelines.calibration import Calibration

        cal = Calibration.from_dict(json.load(fh)["calibration"])
    j = cal.names.index(feature)

    def score(s, extra) -> tuple[np.ndarray, list[str]]:
        feats = extra["windows"][s.tenant][2]
        bases, statuses = cal.replay(feats)
        z = np.array([(f[j] - b.center[j]) / b.scale[j] if b.frozen else 0.0 for f, b in zip(feats, bases)])
        return sign * z, statuses
    return score


def either(rules: list, cal, cal_x, budget: float):
    """Alarm when any rule does: each scaled by its own threshold on the calibration runs."""
    scale = []
    for r in rules:
        pairs = [r(s, cal_x) for s in cal]
        scale.append(threshold_for_quiet_budget(cal, [p for p, _ in pairs], budget,
                                                trusted=[_trusted(st, len(p)) for p, st in pairs]))

    def score(s, extra):
        parts = [r(s, extra) for r in rules]
        return np.max([p / max(t, 1e-9) for (p, _), t in zip(parts, scale)], axis=0), parts[0][1]
    return score


def bootstrap(scens, scores, threshold: float, trusted, delivery: float, resamples: int = 1000,
              seed: int = 0) -> dict:
    """90 % intervals of (false alarms per quiet hour, warned fraction, median lead) over
    runs drawn with replacement."""
    outs = [fleet_outcome(s, sc, threshold, delivery_s=delivery, trusted=tr)
            for s, sc, tr in zip(scens, scores, trusted)]
    rng = np.random.default_rng(seed)
    fa, warned, lead = [], [], []
    for _ in range(resamples):
        pick = rng.integers(0, len(outs), len(outs))
        m = summarise_fleet([outs[i] for i in pick])
        if m["false_alarms_per_quiet_hour"] is not None:
            fa.append(m["false_alarms_per_quiet_hour"])
        if m["warned_fraction"] is not None:
            warned.append(m["warned_fraction"])
        if m["median_lead_s"] is not None:
            lead.append(m["median_lead_s"])

    def iv(x):
        return [round(float(np.percentile(x, 5)), 3), round(float(np.percentile(x, 95)), 3)] if x else None
    return {"false_alarms_per_quiet_hour": iv(fa), "warned_fraction": iv(warned), "median_lead_s": iv(lead)}


def _trusted(statuses, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if statuses is None else np.array(statuses) == "ok"


def evaluate(name: str, cal, cal_x, ev, ev_x, score_fn, budget: float, delivery: float) -> dict:
    cal_pairs = [score_fn(s, cal_x) for s in cal]
    ev_pairs = [score_fn(s, ev_x) for s in ev]
    cal_scores, ev_scores = [p for p, _ in cal_pairs], [p for p, _ in ev_pairs]
    cal_tr = [_trusted(st, len(p)) for p, st in cal_pairs]
    ev_tr = [_trusted(st, len(p)) for p, st in ev_pairs]
    statuses = [st for _, st in ev_pairs if st is not None]
    thr = threshold_for_quiet_budget(cal, cal_scores, budget, trusted=cal_tr)
    out = {"method": name, "threshold": thr,
           "calibration": score_fleets(cal, cal_scores, thr, delivery_s=delivery, trusted=cal_tr),
           "evaluation": score_fleets(ev, ev_scores, thr, delivery_s=delivery, trusted=ev_tr),
           "evaluation_intervals": bootstrap(ev, ev_scores, thr, ev_tr, delivery),
           "pr_auc": {"calibration": pr_auc(cal, cal_scores), "evaluation": pr_auc(ev, ev_scores)}}
    if statuses:
        flat = [x for st in statuses for x in st]
        out["evaluation_statuses"] = {k: flat.count(k) for k in sorted(set(flat))}
    out["per_run"] = {s.tenant: " ".join(f"{x:.2f}" for x in sc) for s, sc in zip(ev, ev_scores)}
    return out


def simulated_test(cache: str | None) -> list:
    """The held-out test scenarios of ``aura backtest``'s defaults (24 in-distribution seeds
    2000-2023 of the committed model's training family, 12 out-of-distribution 400-agent
    seeds 3000-3011), through the pipeline's feature code; cached (pickle) at ``cache``."""
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from pipelines.backtest.run import BacktestConfig, family_scenarios
    from pipelines.training_data import DatasetConfig

    if cache and os.path.exists(cache):
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    ds, bt = DatasetConfig(), BacktestConfig()
    scs = (family_scenarios(bt.test_seeds, ds.agents, ds.graphs, ds.mechanisms, ds.duration_s, "id")
           + family_scenarios(bt.ood_seeds, bt.ood_agents, ds.graphs, ds.mechanisms, ds.duration_s, "ood"))
    with ProcessPoolExecutor(2) as pool:
        data = list(pool.map(_simulate, scs))
    if cache:
        with open(cache, "wb") as fh:
            pickle.dump(data, fh)
    return data


def _simulate(sc):
    from pipelines.training_data import scenario_windows
    from pipelines.windowing import WindowSpec

    return scenario_windows(sc, WindowSpec(), 60.0)


def simulated_pr_auc(model_dir: str, data: list) -> dict:
    """Window PR-AUC (60 s horizon, windows outside cascades) pooled, in and out of
    distribution - the backtest's test-split figure, same scoring (a test checks it)."""
    from sklearn.metrics import average_precision_score

    pred = OnnxPredictor(model_dir)
    pred.load_model()
    with open(os.path.join(model_dir, "model.json")) as fh:
        cols = [FeatureExtractor.names().index(n) for n in json.load(fh)["feature_names"]]
    ys, ps, fam = [], [], []
    for s in data:
        p, statuses = score_tenant(pred, s.window_end - 10.0, s.window_end, s.features[:, cols])
        p = np.where(np.array(statuses) == "ok", p, 0.0)
        keep = ~s.in_cascade
        ys.append(s.label[keep])
        ps.append(p[keep])
        fam.append(s.tenant.split("-")[0])

    def ap(which):
        sel = [i for i, f in enumerate(fam) if f in which]
        return round(float(average_precision_score(np.concatenate([ys[i] for i in sel]),
                                                   np.concatenate([ps[i] for i in sel]))), 3)
    return {"pooled": ap(("id", "ood")), "in_distribution": ap(("id",)), "out_of_distribution": ap(("ood",)),
            "scenarios": len(data)}


def line(r: dict) -> str:
    c, e, iv = r["calibration"], r["evaluation"], r["evaluation_intervals"]

    def f(x, fmt=".2f"):
        return "-" if x is None else format(x, fmt)
    return (f"{r['method']:<34} thr {r['threshold']:.3f} | calibration: FA/qh "
            f"{f(c['false_alarms_per_quiet_hour'])}, warned {c['warned']}/{c['onsets']} | evaluation: FA/qh "
            f"{f(e['false_alarms_per_quiet_hour'])} {iv['false_alarms_per_quiet_hour']} over "
            f"{e['quiet_hours']:.2f} h, warned {e['warned']}/{e['onsets']} = {f(e['warned_fraction'])} "
            f"{iv['warned_fraction']}, median lead {f(e['median_lead_s'], '.0f')} s {iv['median_lead_s']}, "
            f"late {e['late']}, missed {e['missed']}, fizzle alarms {e['fizzle_alarm_windows']}, PR-AUC "
            f"{f(r['pr_auc']['evaluation'], '.3f')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="bench/corpus/testbed-v1", help="a testbed corpus (default: the "
                                                                       "shipped one)")
    p.add_argument("--models", default=DEFAULT_MODEL_DIR, help="comma-separated model directories")
    p.add_argument("--budget", type=float, default=1.0,
                   help="false alarms per quiet fleet-hour (fitted on calibration)")
    p.add_argument("--delivery", type=float, default=5.0, help="seconds from window end to a delivered alert")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--sim-cache", default="output/bench-sim-test.pkl",
                   help="cache of the simulated test scenarios (built once, ~5 min)")
    a = p.parse_args()
    t0 = time.perf_counter()
    cal, cal_x = load_split(a.corpus, "calibration")
    ev, ev_x = load_split(a.corpus, "evaluation")
    onsets = sum(len(s.onsets) for s in ev)
    print(f"corpus {a.corpus}: calibration {len(cal)} runs, evaluation {len(ev)} runs with {onsets} onsets "
          f"({time.perf_counter() - t0:.0f} s to window and featurise)")
    results = []
    rule = StaticThresholdRule().fit(cal)  # references from the calibration runs' healthy windows
    results.append(evaluate("static threshold rules", cal, cal_x, ev, ev_x,
                            lambda s, x: (rule.score(s), None), a.budget, a.delivery))
    print(line(results[-1]), flush=True)
    err = relative_rule(DEFAULT_MODEL_DIR, "error_rate_max")
    betti = relative_rule(DEFAULT_MODEL_DIR, "stress_h0_betti_t0.25", -1.0)
    for name, fn in (("error rate max over the tenant's baseline", err),
                     ("stress H0 Betti(0.25) under the tenant's baseline", betti),
                     ("either of the two", either([err, betti], cal, cal_x, a.budget))):
        results.append(evaluate(name, cal, cal_x, ev, ev_x, fn, a.budget, a.delivery))
        print(line(results[-1]), flush=True)
    sim_data = simulated_test(a.sim_cache)
    for d in a.models.split(","):
        results.append(evaluate(os.path.relpath(d), cal, cal_x, ev, ev_x, model_scorer(d), a.budget,
                                a.delivery))
        sim = results[-1]["simulator_test"] = simulated_pr_auc(d, sim_data)
        print(line(results[-1]) + f" | simulator test PR-AUC {sim['pooled']:.3f} (in distribution "
              f"{sim['in_distribution']:.3f}, out {sim['out_of_distribution']:.3f}; "
              f"{sim['scenarios']} scenarios)", flush=True)
    print(f"machine: {platform.node()} {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"{time.perf_counter() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
