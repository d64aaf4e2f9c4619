"""Scoring invariants (Hypothesis), baselines on hand-made windows, and thresholds frozen
on the validation split."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.backtest import baselines as bl
from pipelines.backtest.run import OOD, evaluate, freeze_thresholds
from pipelines.backtest.scoring import (
    ScenarioWindows,
    outcome,
    pr_auc,
    summarise,
    threshold_for_budget,
    window_labels,
)
from pipelines.backtest.uncertainty import bootstrap_bar

T0 = 1_767_225_600.0
N_F = len(bl.NAMES)


def scenario(n: int, onsets: list[float], lengths: list[float], horizon: float = 60.0, tenant: str = "t",
             family: str = "in_distribution", features: np.ndarray | None = None) -> ScenarioWindows:
    ends = T0 + 10.0 * np.arange(1, n + 1)
    on = np.array(sorted(onsets), dtype=float)
    return ScenarioWindows(tenant, family, 100, "layered", ends,
                           features if features is not None else np.zeros((n, N_F)), on,
                           on + np.array(lengths[: len(on)], dtype=float), on - 20.0, 10.0 * n, horizon)


@st.composite
def scored_scenarios(draw):
    n = draw(st.integers(1, 60))
    k = draw(st.integers(0, 4))
    onsets = [T0 + draw(st.floats(0, 10.0 * n + 30)) for _ in range(k)]
    lengths = [draw(st.floats(0, 120)) for _ in range(k)]
    s = scenario(n, onsets, lengths, horizon=draw(st.sampled_from([30.0, 60.0])))
    scores = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    return s, scores, draw(st.floats(0, 1))


@settings(max_examples=300, deadline=None)
@given(scored_scenarios())
def test_alarms_and_onsets_reconcile(case):
    s, scores, thr = case
    o = outcome(s, scores, thr)
    assert o.alarms == int((scores >= thr).sum())  # each alarm is exactly true, false or late
    assert o.true_alarms + o.false_alarms == int(((scores >= thr) & ~s.in_cascade).sum())
    assert o.warned + o.late_only + o.missed == o.onsets == len(s.onsets)
    assert len(o.lead_times) == o.warned
    assert all(0 < x <= s.horizon_s for x in o.lead_times)  # never after onset, never beyond the horizon
    assert (o.false_episodes > 0) == (o.false_alarms > 0) and o.false_episodes <= o.false_alarms
    assert o.positives == int((s.label.astype(bool) & ~s.in_cascade).sum())
    m = summarise([o])
    for k in ("precision", "recall", "f1", "event_recall"):
        assert m[k] is None or 0.0 <= m[k] <= 1.0
    higher = outcome(s, scores, min(thr + 0.1, 1.01))  # a higher threshold never adds alarms
    assert higher.alarms <= o.alarms and higher.warned <= o.warned


@settings(max_examples=200, deadline=None)
@given(st.lists(scored_scenarios(), min_size=1, max_size=4))
def test_pr_auc_bounds_and_perfect_ranking(cases):
    ss = [c[0] for c in cases]
    auc = pr_auc(ss, [c[1] for c in cases])
    ys = np.concatenate([s.label[~s.in_cascade] for s in ss])
    if auc is None:
        assert len(ys) == 0 or ys.min() == ys.max()
        return
    assert 0.0 <= auc <= 1.0
    assert pr_auc(ss, [s.label.astype(float) for s in ss]) == 1.0


def test_lead_time_late_and_false_alarms_by_hand():
    s = scenario(30, [T0 + 155.0], [50.0])  # windows end at T0+10..T0+300; onset at +155
    assert s.label.tolist()[9:16] == [1, 1, 1, 1, 1, 1, 0]  # ends 100..150 precede the onset by <= 60 s
    assert s.in_cascade.tolist()[15:21] == [True] * 5 + [False]  # ends 160..200 lie in [155, 205]
    scores = np.zeros(30)
    scores[12] = 1.0  # end +130: 25 s before the onset
    scores[13] = 1.0
    scores[3] = scores[4] = 1.0  # one false episode of two windows
    scores[25] = 1.0  # a second false episode
    o = outcome(s, scores, 0.5)
    assert o.lead_times == [25.0] and o.warned == 1
    assert (o.false_alarms, o.false_episodes) == (3, 2)
    late = np.zeros(30)
    late[16] = 1.0  # only after the onset
    o2 = outcome(s, late, 0.5)
    assert (o2.warned, o2.late_only, o2.missed, o2.late_alarms) == (0, 1, 0, 1)


def test_window_labels_match_training_definition():
    ends = np.array([100.0, 140.0, 150.0, 200.0])
    label, inside = window_labels(ends, np.array([150.0]), np.array([170.0]), 60.0)
    assert label.tolist() == [1, 1, 0, 0] and inside.tolist() == [False, False, True, False]


def test_budget_threshold_keeps_false_alarms_within_budget():
    rng = np.random.default_rng(0)
    ss = [scenario(90, [T0 + 400.0], [60.0], tenant=f"v{i}") for i in range(4)]
    scores = [rng.uniform(size=90) for _ in ss]
    t = threshold_for_budget(ss, scores, 1.0)
    outs = [outcome(s, sc, t) for s, sc in zip(ss, scores)]
    assert sum(o.false_episodes for o in outs) / sum(o.fleet_hours for o in outs) <= 1.0


def test_thresholds_are_frozen_on_validation_whatever_the_test_data():
    rng = np.random.default_rng(1)
    val = [scenario(90, [T0 + 300.0, T0 + 700.0], [40.0, 40.0], tenant=f"v{i}") for i in range(3)]
    test = [scenario(90, [T0 + 500.0], [40.0], tenant=f"t{i}", family=OOD if i else "in_distribution")
            for i in range(3)]
    scores = {"m": {s.tenant: rng.uniform(size=90) for s in val + test}}
    a = evaluate(scores, val, test, 1.0)
    changed = {"m": {**scores["m"], **{s.tenant: rng.uniform(size=90) for s in test}}}
    b = evaluate(changed, val, [scenario(90, [T0 + 100.0], [10.0], tenant=s.tenant, family=s.family)
                                for s in test], 1.0)
    assert a["thresholds"] == b["thresholds"] == {"m": freeze_thresholds(val, scores["m"], 1.0)}
    assert a["methods"]["m"]["test"] != b["methods"]["m"]["test"]
    assert set(a["methods"]["m"]) == {"validation", "test", "test_in_distribution",
                                      "test_out_of_distribution"}


def _with_features(n: int, cols: dict[str, np.ndarray], **kw) -> ScenarioWindows:
    f = np.zeros((n, N_F))
    for name, v in cols.items():
        f[:, bl.NAMES.index(name)] = v
    return scenario(n, features=f, **kw)


def test_static_rule_needs_the_duration_and_scales_with_references():
    err = np.array([0.01] * 5 + [0.5, 0.5, 0.01, 0.5] + [0.01] * 3)
    lat = np.log1p(np.full(len(err), 20.0))
    s = _with_features(len(err), {"error_rate_p90": err, "latency_p99_log_p90": lat}, onsets=[], lengths=[])
    calm = np.full(len(err), 0.01)
    healthy = _with_features(len(err), {"error_rate_p90": calm, "latency_p99_log_p90": lat},
                             onsets=[], lengths=[])
    rule = bl.StaticThresholdRule(for_windows=2).fit([healthy])
    assert np.allclose(rule.refs, (0.01, 20.0))
    sc = rule.score(s)
    assert sc[0] == 0.0  # no alarm before the duration has passed
    assert sc[6] > sc[5] and sc[6] > 1 and sc[8] < sc[6]  # two windows over: fires; one: not


def test_early_warning_trend_rises_with_rising_indicators():
    n = 20
    up = np.linspace(0, 1, n)
    s = _with_features(n, {k: up for k in bl.EarlyWarningSignals().indicators}, onsets=[], lengths=[])
    sc = bl.EarlyWarningSignals(window=6).score(s)
    assert sc[0] == 0.0 and np.allclose(sc[5:], 1.0)
    assert bl.kendall_tau_trailing(-up, 6)[-1] == -1.0


def test_learned_baselines_fit_and_score_every_window():
    rng = np.random.default_rng(2)
    train = [_with_features(60, {n: rng.normal(size=60) for n in bl.NAMES[:30]}, onsets=[T0 + 300.0],
                            lengths=[30.0], tenant=f"f{i}") for i in range(3)]
    for m in (bl.IsolationForestBaseline(n_estimators=20), bl.LogisticAllFeatures()):
        m.fit(train)
        out = m.score(train[0])
        assert out.shape == (60,) and np.isfinite(out).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(scored_scenarios(), min_size=1, max_size=5), st.integers(0, 3))
def test_bootstrap_intervals_are_ordered_bounded_and_reproducible(cases, seed):
    ss, aura = [c[0] for c in cases], [c[1] for c in cases]
    other = [np.roll(c[1], 1) for c in cases]
    ci = bootstrap_bar(ss, aura, other, 0.5, resamples=50, seed=seed)
    assert ci == bootstrap_bar(ss, aura, other, 0.5, resamples=50, seed=seed)
    for key, lo_bound, hi_bound in (("pr_auc_margin", -1, 1), ("event_recall", 0, 1),
                                    ("median_lead_time_s", 0, 60)):
        c = ci[key]
        assert 0 <= c["resamples_used"] <= 50
        if c["low"] is None:
            assert c["resamples_used"] == 0
        else:
            assert lo_bound <= c["low"] <= c["high"] <= hi_bound
    # a resample's pooled rate is a weighted mean of the scenarios' own rates
    rates = [o.false_episodes / o.fleet_hours for o in (outcome(s, a, 0.5) for s, a in zip(ss, aura))]
    fa = ci["false_alarms_per_fleet_hour"]
    assert fa["resamples_used"] == 50
    assert min(rates) - 1e-9 <= fa["low"] <= fa["high"] <= max(rates) + 1e-9


def test_bootstrap_of_identical_scenarios_has_no_spread_and_sees_a_clear_winner():
    one = scenario(30, [T0 + 155.0], [50.0])
    perfect = one.label.astype(float)  # ranks every positive first; alarms 60 s ahead
    noise = np.random.default_rng(0).random(30)
    ci = bootstrap_bar([one] * 6, [perfect] * 6, [noise] * 6, 0.5, resamples=200)
    o = outcome(one, perfect, 0.5)
    assert ci["event_recall"]["low"] == ci["event_recall"]["high"] == 1.0
    assert ci["median_lead_time_s"]["low"] == ci["median_lead_time_s"]["high"] == o.lead_times[0]
    fa = o.false_episodes / o.fleet_hours
    assert abs(ci["false_alarms_per_fleet_hour"]["low"] - fa) < 1e-12
    assert abs(ci["false_alarms_per_fleet_hour"]["high"] - fa) < 1e-12
    margin = 1.0 - pr_auc([one], [noise])
    assert abs(ci["pr_auc_margin"]["low"] - margin) < 1e-12
    assert abs(ci["pr_auc_margin"]["high"] - margin) < 1e-12
    assert bootstrap_bar([one], [perfect], None, 0.5, resamples=10)["pr_auc_margin"]["resamples_used"] == 0


def test_bootstrap_interval_widens_with_disagreeing_scenarios():
    hit = scenario(30, [T0 + 155.0], [50.0], tenant="a")
    miss = scenario(30, [T0 + 155.0], [50.0], tenant="b")
    ci = bootstrap_bar([hit, miss] * 5, [hit.label.astype(float), np.zeros(30)] * 5, None, 0.5, resamples=500)
    r = ci["event_recall"]
    assert r["low"] < 0.5 < r["high"] and r["resamples_used"] == 500  # the point estimate, 0.5, inside


def test_windows_without_a_committed_verdict_score_zero_and_are_counted():
    from types import SimpleNamespace

    from pipelines.backtest.run import aura_scores, windows_without_verdict

    s = scenario(6, [T0 + 45.0], [20.0])
    starts = np.arange(6) * 10_000  # window starts in ms, as the pipeline keys them
    committed = {("t", int(w)): {"probability": 0.25 + 0.1 * i} for i, w in enumerate(starts) if i != 2}
    res = SimpleNamespace(features={"t": (starts, s.window_end, s.features)}, predictions=committed)
    got = aura_scores(res, s)
    assert got[2] == 0.0 and np.allclose(np.delete(got, 2), [0.25, 0.35, 0.55, 0.65, 0.75])
    assert windows_without_verdict(res, [s]) == 1
    res.predictions = {}
    assert windows_without_verdict(res, [s, s]) == 12
