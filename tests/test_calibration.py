"""Per-tenant input calibration (``pipelines.calibration``) and the verdict status it gives,
alone and through ``history_step`` as both engines call it."""

from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipelines.calibration import CALIBRATING, OK, OUT_OF_DISTRIBUTION, Baseline, Calibration
from pipelines.inference import DEFAULT_MODEL_DIR, ModelInfo, TenantHistory, history_step, sequence_at
from tests.calibrated_model import ABSOLUTE, WINDOWS

NAMES = ("latency", "requests", "errors", "agents")
F = len(NAMES)


def calibration(windows: int = 3, floor: float = 0.5, **kw) -> Calibration:
    return Calibration(windows, NAMES, ("errors", "agents"), (floor,) * F, **kw)


values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
vectors = hnp.arrays(np.float64, F, elements=values)


def robust(stack: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 MAD (at least ``floor``), written out independently of the module."""
    center = np.median(stack, axis=0)
    return center, np.maximum(1.4826 * np.median(np.abs(stack - center), axis=0), floor)


# -- the baseline ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 5), data=st.data())
def test_baseline_freezes_exactly_when_a_window_after_k_distinct_windows_arrives(k, data):
    cal = calibration(k)
    panes = data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k))  # extra panes per window
    base, last = Baseline(), {}
    for w in range(k):
        for _ in range(1 + panes[w]):  # a later pane of a baseline window replaces the earlier one
            vec = data.draw(vectors)
            base, last[w] = cal.observe(base, 1000 * w, vec), vec
            assert not base.frozen
    assert sorted(base.first) == [1000 * w for w in range(k)]
    frozen = cal.observe(base, 1000 * k, data.draw(vectors))
    assert frozen.frozen and frozen.first == {}
    center, scale = robust(np.stack([last[w] for w in range(k)]), 0.5)
    np.testing.assert_allclose(frozen.center, center)
    np.testing.assert_allclose(frozen.scale, scale)
    after = cal.observe(frozen, 1000 * (k + 1), data.draw(vectors))
    assert after is frozen  # frozen for good: later windows (and late panes) change nothing
    assert cal.observe(frozen, 0, data.draw(vectors)) is frozen


def test_a_later_pane_of_a_baseline_window_replaces_it():
    cal = calibration(3, floor=0.01)
    base = Baseline()
    for start, vec in [(0, [1.0] * F), (10, [2.0] * F), (10, [9.0] * F), (20, [4.0] * F)]:
        base = cal.observe(base, start, np.array(vec))
    assert len(base.first) == 3 and list(base.first[10]) == [9.0] * F
    base = cal.observe(base, 30, np.zeros(F))  # the fourth window freezes the first three
    assert list(base.center) == [4.0] * F  # median of 1, 9, 4 (not of 1, 2, 4)
    np.testing.assert_allclose(base.scale, [1.4826 * 3.0] * F)


@settings(max_examples=60, deadline=None)
@given(stack=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.just(F)), elements=values))
def test_a_window_equal_to_the_baseline_median_is_zero_on_the_relative_part(stack):
    cal = calibration(len(stack))
    base = Baseline()
    for i, vec in enumerate(stack):
        base = cal.observe(base, i, vec)
    base = cal.observe(base, len(stack), stack[0])
    assert base.frozen
    x = np.median(stack, axis=0)
    out = cal.transform(x, base)
    assert out.shape == (cal.n_inputs,) and out.dtype == np.float32
    assert np.all(out[:F] == 0.0)
    np.testing.assert_array_equal(out[F:], x[[NAMES.index(n) for n in cal.absolute]].astype(np.float32))
    one_scale_up = cal.transform(x + base.scale, base)  # one robust spread above: exactly 1
    np.testing.assert_allclose(one_scale_up[:F], 1.0, rtol=1e-5)
    assert cal.input_names() == [f"rel_{n}" for n in NAMES] + ["errors", "agents"]


# -- statuses ----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 6), feats=hnp.arrays(np.float64, st.tuples(st.integers(1, 15), st.just(F)),
                                             elements=values))
def test_a_tenants_first_k_windows_are_calibrating_then_ok(k, feats):
    _, statuses = calibration(k).replay(feats)
    assert statuses == [CALIBRATING] * min(k, len(feats)) + [OK] * max(0, len(feats) - k)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(4, 40), far=st.integers(0, 40), frac=st.sampled_from([0.1, 0.25, 0.5]), data=st.data())
def test_out_of_distribution_when_more_than_a_fraction_of_inputs_lie_far_outside(n, far, frac, data):
    far = min(far, n)
    lo, hi = np.zeros(n), np.full(n, 2.0)  # width 2, margin 1: "far" is below -2 or above 4
    cal = Calibration(1, tuple(f"f{i}" for i in range(n)), (), (1.0,) * n, tuple(lo), tuple(hi),
                      ood_fraction=frac, ood_margin=1.0)
    inside = data.draw(hnp.arrays(np.float64, n, elements=st.floats(-1.9, 3.9)))  # outside, not far
    v = inside.copy()
    idx = data.draw(st.permutations(range(n)))[:far]
    v[idx] = data.draw(st.sampled_from([-50.0, 50.0]))
    base = Baseline(center=np.zeros(n), scale=np.ones(n))
    assert cal.status(base, inside) == OK
    assert cal.status(base, v) == (OUT_OF_DISTRIBUTION if far / n > frac else OK)
    assert cal.status(base, np.stack([inside, v])) == cal.status(base, v)  # a sequence: its last window
    assert cal.status(Baseline(), v) == CALIBRATING  # no verdict on the range before the baseline


def test_an_unusual_window_after_the_baseline_is_out_of_distribution_through_history_step():
    cal = calibration(2, input_low=(-3.0,) * 4 + (0.0, 0.0), input_high=(3.0,) * 4 + (1.0, 5.0))
    state, got = None, []
    rng = np.random.default_rng(0)
    quiet = lambda: np.array([50.0, 100.0, 0.01, 3.0]) + rng.normal(0, 0.1, F)  # noqa: E731
    for i, vec in enumerate([quiet(), quiet(), quiet(), np.array([5000.0, 1.0, 0.9, 3.0]), quiet()]):
        _, _, state, status = history_step(state, 10_000 * i, 10.0 * (i + 1), vec, 4, cal)
        got.append(status)
    assert got == [CALIBRATING, CALIBRATING, OK, OUT_OF_DISTRIBUTION, OK]


# -- replay = the stream -----------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 5), seq_len=st.integers(1, 8), data=st.data(),
       feats=hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.just(F)), elements=values),
       ranged=st.booleans())
def test_replay_gives_the_statuses_and_model_inputs_of_stepping_history_step(k, seq_len, data, feats, ranged):
    n_in = F + 2
    rng_kw = {"input_low": (-2.0,) * n_in, "input_high": (2.0,) * n_in, "ood_fraction": 0.3} if ranged else {}
    cal = calibration(k, **rng_kw)
    gaps = data.draw(st.lists(st.sampled_from([1, 1, 1, 2, 5]), min_size=len(feats), max_size=len(feats)))
    starts = np.cumsum(gaps) * 10_000  # missing windows leave gaps
    ends = starts / 1000 + 10.0
    bases, statuses = cal.replay(feats)
    state = None
    for i, vec in enumerate(feats):
        x, dt, state, status = history_step(state, int(starts[i]), float(ends[i]), vec, seq_len, cal)
        assert isinstance(state, TenantHistory)
        raw, want_dt = sequence_at(feats, ends, i, t=seq_len)
        np.testing.assert_array_equal(x, cal.transform(raw, bases[i]))
        np.testing.assert_array_equal(dt, want_dt)
        assert status == statuses[i]
        assert x.shape == (seq_len, cal.n_inputs)


def test_without_calibration_history_step_feeds_raw_features_and_says_ok():
    feats = np.arange(12, dtype=float).reshape(3, 4)
    state = None
    for i, vec in enumerate(feats):
        x, _, state, status = history_step(state, 10_000 * i, 10.0 * (i + 1), vec, 4)
        assert status == OK
        np.testing.assert_array_equal(x, sequence_at(feats, np.array([10.0, 20.0, 30.0]), i, t=4)[0])
    assert state.baseline == Baseline()


# -- the stored form ---------------------------------------------------------------------------
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(windows=st.integers(1, 50), names=st.lists(st.text("abcxyz_", min_size=1), min_size=1, max_size=6,
                                                   unique=True), data=st.data())
def test_to_dict_from_dict_round_trip_through_json(windows, names, data):
    n = len(names)
    absolute = tuple(data.draw(st.lists(st.sampled_from(names), max_size=n, unique=True)))
    ranged = data.draw(st.booleans())
    n_in = n + len(absolute)
    cal = Calibration(windows, tuple(names), absolute,
                      tuple(data.draw(st.lists(st.floats(1e-6, 1e3), min_size=n, max_size=n))),
                      tuple(data.draw(st.lists(finite, min_size=n_in, max_size=n_in))) if ranged else (),
                      tuple(data.draw(st.lists(finite, min_size=n_in, max_size=n_in))) if ranged else (),
                      data.draw(st.floats(0, 1)), data.draw(st.floats(0, 10)))
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal and again.n_inputs == n_in


def test_model_json_carries_the_calibration_and_the_committed_model_has_none(calibrated_model_dir):
    info = ModelInfo.load(calibrated_model_dir)
    assert info.calibration is not None and info.calibration.windows == WINDOWS
    assert info.calibration.absolute == ABSOLUTE and info.n_features == info.calibration.n_inputs
    committed = ModelInfo.load(DEFAULT_MODEL_DIR).calibration  # the committed model is calibrated ...
    assert committed is not None and committed.windows == 6 and committed.n_inputs == 71
    v1 = os.path.join(os.path.dirname(DEFAULT_MODEL_DIR), "cascade_cfc_v1")
    assert ModelInfo.load(v1).calibration is None  # ... the session-5 model it replaced is not

