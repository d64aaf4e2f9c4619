"""How sure is the bar? Confidence intervals of its three figures by resampling scenarios.

A test split of a few dozen scenarios holds a few dozen onsets, so one onset more or less
warned moves the recall by several points. The scenario is the unit that was sampled (its
windows are not independent), so the bootstrap draws whole scenarios with replacement and
recomputes, at the thresholds frozen on validation, the PR-AUC margin of AURA over the best
other method (the one named by the point estimate), AURA's event recall at the operating
threshold and its median lead time - and, beside the bar, the false alarms per fleet-hour
that threshold gives on test (it was fitted to the budget on validation, and that need not
carry over). Percentile intervals; a figure whose interval excludes
the bar is decided by the data, one whose interval straddles it is not.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from pipelines.backtest.scoring import ScenarioWindows, outcome


def _pooled_ap(y: list[np.ndarray], p: list[np.ndarray], pick: np.ndarray) -> float:
    yy = np.concatenate([y[i] for i in pick])
    if len(yy) == 0 or yy.min() == yy.max():
        return np.nan
    return float(average_precision_score(yy, np.concatenate([p[i] for i in pick])))


def bootstrap_bar(test: list[ScenarioWindows], aura: list[np.ndarray], best: list[np.ndarray] | None,
                  operating: float, resamples: int = 1000, level: float = 0.90, seed: int = 0) -> dict:
    """``level`` percentile intervals of (PR-AUC margin, event recall, median lead time) over
    ``resamples`` scenario resamples; ``best`` = the best other method's scores (None: no
    margin). Resamples without a needed quantity (one class only, no onset, no lead) are
    skipped for that quantity; ``resamples_used`` says how many counted."""
    if not test:
        raise ValueError("no test scenarios to resample")
    scored = [~s.in_cascade for s in test]
    y = [s.label[m] for s, m in zip(test, scored)]
    pa = [np.asarray(a, dtype=float)[m] for a, m in zip(aura, scored)]
    pb = [np.asarray(b, dtype=float)[m] for b, m in zip(best, scored)] if best is not None else None
    outs = [outcome(s, a, operating) for s, a in zip(test, aura)]
    onsets = np.array([o.onsets for o in outs])
    warned = np.array([o.warned for o in outs])
    false = np.array([o.false_episodes for o in outs])
    hours = np.array([o.fleet_hours for o in outs])
    rng = np.random.default_rng(seed)
    margin, recall, lead, fa = [], [], [], []
    for _ in range(resamples):
        pick = rng.integers(0, len(test), len(test))
        if pb is not None:
            m = _pooled_ap(y, pa, pick) - _pooled_ap(y, pb, pick)
            if np.isfinite(m):
                margin.append(m)
        if hours[pick].sum() > 0:
            fa.append(false[pick].sum() / hours[pick].sum())
        if onsets[pick].sum():
            recall.append(warned[pick].sum() / onsets[pick].sum())
        leads = [x for i in pick for x in outs[i].lead_times]
        if leads:
            lead.append(float(np.median(leads)))
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)

    def interval(v: list[float]) -> dict:
        lo, hi = (float(x) for x in np.percentile(v, q)) if v else (None, None)
        return {"low": lo, "high": hi, "resamples_used": len(v)}

    return {"level": level, "resamples": resamples, "unit": "scenario",
            "pr_auc_margin": interval(margin), "event_recall": interval(recall),
            "median_lead_time_s": interval(lead), "false_alarms_per_fleet_hour": interval(fa)}


def describe(ci: dict) -> str:
    """The intervals as one sentence (headline and report)."""
    def iv(k: str, fmt: str) -> str:
        c = ci[k]
        return "-" if c["low"] is None else f"[{c['low']:{fmt}}, {c['high']:{fmt}}]"

    return (f"{ci['level']:.0%} intervals, {ci['resamples']} resamples of the test scenarios: "
            f"margin {iv('pr_auc_margin', '+.3f')}, recall {iv('event_recall', '.2f')}, "
            f"median lead {iv('median_lead_time_s', '.0f')} s, false alarms per fleet-hour "
            f"{iv('false_alarms_per_fleet_hour', '.2f')}")
