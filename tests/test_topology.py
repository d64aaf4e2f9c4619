"""The topology feature stage, checked against independent computations."""

from __future__ import annotations

import glob
import json
import math
import os

import networkx as nx
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from pipelines.beam import job
from pipelines.topology.diagram_features import wasserstein
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.filtrations import CoMovementCloud, StressFiltration, greedy_permutation
from pipelines.topology.rows import FEATURE_ROW, vectors
from pipelines.topology.synthetic import graph_edges, snapshot_from_edges, sparse_call_graph
from pipelines.windowing import WindowSpec, build_snapshot
from schemas import FEATURES_SCHEMA, FEATURES_SCHEMA_VERSION
from tests.conftest import T0, line, record
from tests.test_beam_job import mixed_files

FX = FeatureExtractor()


def snap_of(g: nx.Graph, seed: int = 0, **kw):
    return snapshot_from_edges(graph_edges(g), g.number_of_nodes(), np.random.default_rng(seed), **kw)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), p=st.floats(0.05, 0.5), seed=st.integers(0, 10**6))
def test_finite_h0_deaths_are_the_minimum_spanning_tree_weights(n, p, seed):
    g = nx.gnp_random_graph(n, p, seed=seed)
    snap = snap_of(g, seed, stressed=0.3)
    u, v, w = StressFiltration().edge_values(snap)
    dgm = StressFiltration().diagrams(snap).h0
    deaths = np.sort(dgm[np.isfinite(dgm[:, 1]), 1])
    adj = sp.coo_matrix((w + 1.0, (u, v)), shape=(n, n))  # +1: scipy drops zero weights
    mst = np.sort(minimum_spanning_tree(adj).data - 1.0)
    np.testing.assert_allclose(deaths, mst, atol=1e-6)  # ripser works in float32
    n_comp = connected_components(adj, directed=False)[0]
    assert np.isinf(dgm[:, 1]).sum() == n_comp


@pytest.mark.parametrize("n", [4, 5, 9, 30])
def test_a_cycle_has_exactly_one_h1_bar_born_at_its_heaviest_link(n):
    snap = snap_of(nx.cycle_graph(n), seed=n, stressed=0.5)
    _, _, w = StressFiltration().edge_values(snap)
    h1 = StressFiltration().diagrams(snap).h1
    assert len(h1) == 1
    assert math.isclose(h1[0, 0], w.max(), abs_tol=1e-6) and np.isinf(h1[0, 1])


def test_a_triangle_is_filled_and_has_no_h1():
    assert len(StressFiltration().diagrams(snap_of(nx.cycle_graph(3))).h1) == 0


def test_disjoint_union_has_one_infinite_h0_bar_per_part():
    parts = [nx.cycle_graph(5), nx.path_graph(4), nx.complete_graph(4), nx.empty_graph(3)]
    g = nx.disjoint_union_all(parts)  # 3 connected parts + 3 isolated agents
    h0 = StressFiltration().diagrams(snap_of(g)).h0
    assert np.isinf(h0[:, 1]).sum() == 6


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 60), seed=st.integers(0, 10**6))
def test_features_do_not_depend_on_agent_names(n, seed):
    rng = np.random.default_rng(seed)
    edges = sparse_call_graph(n, 4.0, rng)
    if len(edges) == 0:
        edges = np.array([[0, 1]])
    names = [f"agent-{i}" for i in range(n)]
    shuffled = list(np.random.default_rng(seed + 1).permutation(names))
    fx = FeatureExtractor(comove=CoMovementCloud(max_points=20))  # exercise subsampling too
    a = snapshot_from_edges(edges, n, np.random.default_rng(seed), names=names)
    b = snapshot_from_edges(edges, n, np.random.default_rng(seed), names=shuffled)
    va = fx.sequence(None, fx.window(a))
    vb = fx.sequence(None, fx.window(b))
    np.testing.assert_allclose(va, vb, rtol=1e-9, atol=1e-12)


def test_greedy_permutation_is_ripsers():
    from ripser.ripser import get_greedy_perm

    pts = np.random.default_rng(3).standard_normal((300, 5))
    np.testing.assert_array_equal(greedy_permutation(pts, 40), get_greedy_perm(pts, 40)[0])


def test_large_clouds_are_subsampled_and_say_so():
    snap = snapshot_from_edges(sparse_call_graph(300, 4, np.random.default_rng(1)), 300,
                               np.random.default_rng(1))
    d = CoMovementCloud(max_points=50).diagrams(snap)
    assert d.subsampled and d.n_points == 50 and d.n_total == 300
    names = FeatureExtractor.names()
    vec = FX.sequence(None, FX.window(snap))
    assert vec[names.index("comove_subsampled")] == 1.0
    assert vec[names.index("comove_points_log10")] == pytest.approx(math.log10(101))
    small = FX.sequence(None, FX.window(snap_of(nx.path_graph(20))))
    assert small[names.index("comove_subsampled")] == 0.0


def test_giotto_backend_gives_the_same_diagrams():
    snap = snapshot_from_edges(sparse_call_graph(200, 6, np.random.default_rng(2)), 200,
                               np.random.default_rng(2))
    for filt in (StressFiltration, CoMovementCloud):
        a, b = filt(backend="ripser").diagrams(snap), filt(backend="giotto").diagrams(snap)
        for x, y in ((a.h0, b.h0), (a.h1, b.h1)):
            x, y = x[np.lexsort(x.T[::-1])], y[np.lexsort(y.T[::-1])]
            np.testing.assert_allclose(x, y, atol=1e-6)


_bar = st.tuples(st.floats(0, 10), st.floats(0, 10)).map(lambda bd: (min(bd), max(bd)))
_diagram = st.lists(_bar, max_size=7).map(lambda bars: np.array(bars, float).reshape(-1, 2))


@settings(max_examples=200, deadline=None)
@given(_diagram, _diagram, _diagram)
def test_wasserstein_is_persims_distance_and_a_metric(a, b, c):
    """Our assignment-based distance equals persim's (the reference implementation the
    features were designed with) and behaves as a metric on diagrams. persim's ground
    distances come from scikit-learn's dot-product formula, off by up to ~1e-7 near zero
    (ours are exact), hence the absolute tolerance."""
    import warnings

    import persim

    if len(a) or len(b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert wasserstein(a, b) == pytest.approx(persim.wasserstein(a, b), rel=1e-9, abs=1e-6)
    assert wasserstein(a, a) == pytest.approx(0.0, abs=1e-9)
    assert wasserstein(a, b) == pytest.approx(wasserstein(b, a), rel=1e-12, abs=1e-12)
    assert wasserstein(a, c) <= wasserstein(a, b) + wasserstein(b, c) + 1e-9


def test_wasserstein_ignores_infinite_bars_and_moves_lone_points_to_the_diagonal():
    line_ = np.array([[0.0, np.inf]])
    assert wasserstein(line_, np.zeros((0, 2))) == 0.0
    # one bar (1, 3) against nothing: it goes to the diagonal at distance 2 / sqrt(2)
    assert wasserstein(np.array([[1.0, 3.0], [0.0, np.inf]]), np.zeros((0, 2))) == \
        pytest.approx(math.sqrt(2) + 0.0, rel=1e-12)


@pytest.mark.parametrize("case", ["empty", "single", "no_calls", "nan_metrics", "one_link"])
def test_degenerate_windows_give_a_defined_finite_vector(case):
    recs = {
        "empty": [],
        "single": [record(agent="a", calls=[])],
        "no_calls": [record(agent=a, calls=[], t=T0 + k) for a in "abc" for k in range(5)],
        "nan_metrics": [record(agent="a", calls=[{"dst": "ghost", "count": 3, "errors": 3,
                                                  "latency_ms": 2000.0}])],  # ghost: NaN metrics
        "one_link": [record(agent="a", t=T0 + k, calls=[{"dst": "b", "count": 0, "errors": 0,
                                                         "latency_ms": 1.0}]) for k in range(4)],
    }[case]
    from pipelines.telemetry import parse_lines

    snap = build_snapshot("acme", T0, T0 + 10, parse_lines([line(r) for r in recs], "s").records)
    vec = FX.sequence(None, FX.window(snap))
    assert vec.shape == (len(FeatureExtractor.names()),) and np.isfinite(vec).all()


def test_stability_is_zero_for_an_unchanged_window_and_grows_with_change():
    g = nx.gnp_random_graph(80, 0.08, seed=4)
    names = FeatureExtractor.names()
    calm = FX.window(snap_of(g, 1, stressed=0.0))
    same = FX.sequence(calm, calm)
    storm = FX.sequence(calm, FX.window(snap_of(g, 1, stressed=0.6)))
    for k in ("stress_wasserstein_h0", "stress_wasserstein_h1"):
        assert same[names.index(k)] == 0.0
    assert storm[names.index("stress_wasserstein_h0")] > 1.0
    assert same[names.index("has_previous")] == 1.0
    assert FX.sequence(None, calm)[names.index("has_previous")] == 0.0


def test_feature_schema_file_is_the_code():
    doc = json.loads(FEATURES_SCHEMA.read_text())
    assert doc["version"] == FEATURES_SCHEMA_VERSION
    assert [f["name"] for f in doc["features"]] == FeatureExtractor.names()
    assert all(f["description"] for f in doc["features"])
    assert FEATURE_ROW.names[5:] == FeatureExtractor.names()


def read_features(out_dir: str) -> dict:
    out = {}
    for path in glob.glob(os.path.join(out_dir, "features", "*", "*.parquet")):
        t = pq.read_table(path)
        assert set(t.column("feature_version").to_pylist()) == {FEATURES_SCHEMA_VERSION}
        key = (t.column("tenant")[0].as_py(), t.column("window_start")[0].as_py().timestamp(),
               t.column("pane_index")[0].as_py())
        out[key] = vectors(t)[0]
    return out


def test_batch_and_streaming_give_the_same_features(tmp_path):
    paths, good, _ = mixed_files(tmp_path, n_files=3, seed=5)
    spec = WindowSpec(10.0, None, 1000.0)
    b = job.run_batch(paths, spec, str(tmp_path / "b"), FX)
    s = job.run_files_streaming(paths, spec, str(tmp_path / "s"), extractor=FX)
    assert b.feature_rows == s.feature_rows == b.windows > 0
    fb, fs = read_features(str(tmp_path / "b")), read_features(str(tmp_path / "s"))
    assert set(fb) == set(fs)
    for k in fb:
        np.testing.assert_allclose(fb[k], fs[k], rtol=1e-9, atol=1e-9)
    names = FeatureExtractor.names()
    firsts = {t: min(w for (tt, w, _) in fb if tt == t) for (t, _, _) in fb}
    for (t, w, _), vec in fb.items():  # every window but each tenant's first has a previous
        assert vec[names.index("has_previous")] == (0.0 if w == firsts[t] else 1.0)


class FailsForBeta(FeatureExtractor):
    """An extractor that breaks on one tenant, to show the job survives it."""

    def window(self, snap):
        if snap.tenant == "beta":
            raise RuntimeError("boom")
        return super().window(snap)


def test_a_window_that_fails_is_dead_lettered_and_the_job_goes_on(tmp_path):
    paths, _, _ = mixed_files(tmp_path, n_files=2, seed=6)
    s = job.run_batch(paths, WindowSpec(), str(tmp_path / "o"), FailsForBeta())
    assert s.reconciles
    assert s.window_dead["feature_error"] > 0 and s.feature_rows > 0
    assert s.feature_rows + s.window_dead["feature_error"] == s.panes
    assert {k[0] for k in read_features(str(tmp_path / "o"))} == {"acme"}


def test_transformers_map_lists_of_snapshots():
    snaps = [snapshot_from_edges(np.array([[0, 1], [1, 2], [2, 3], [3, 0]]), 4, np.random.default_rng(k),
                                 start=10.0 * k) for k in range(3)]
    assert [len(d.h1) for d in StressFiltration().transform(snaps)] == [1, 1, 1]
    x = FX.transform(snaps)
    assert x.shape == (3, len(FeatureExtractor.names()))
    assert list(x[:, FeatureExtractor.names().index("has_previous")]) == [0.0, 1.0, 1.0]
