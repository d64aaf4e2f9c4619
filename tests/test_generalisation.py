"""What the generalisation work rests on: training sees exactly the calibrated inputs the
stream computes (train/serve parity), floors keep a steady baseline from blowing up, and the
engine-free path over recorded telemetry gives the Beam job's feature vectors."""

from __future__ import annotations

import glob

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.sequences import build_sequences
from models.train import ABSOLUTE, TrainConfig, calibration_for
from pipelines.backtest.recorded import tenant_windows
from pipelines.beam import job
from pipelines.calibration import CALIBRATING, OK
from pipelines.cli import main
from pipelines.inference import OnnxPredictor, PredictorSpec, history_step, score_tenant
from pipelines.simulation.scenario import ScenarioConfig
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.rows import vectors
from pipelines.training_data import scenario_windows
from pipelines.windowing import WindowSpec


@pytest.fixture(scope="module")
def scenarios():
    spec = WindowSpec()
    return [scenario_windows(ScenarioConfig(n_agents=n, duration_s=300, seed=seed, graph=g,
                                            tenant=f"s{seed}"), spec, 60.0)
            for n, seed, g in ((12, 1, "layered"), (20, 2, "scale_free"))]


def test_training_sequences_are_what_the_stream_feeds_the_model(scenarios):
    cfg = TrainConfig(calibration_windows=4)
    cal = calibration_for(cfg, scenarios, FeatureExtractor.names())
    assert cal.absolute == ABSOLUTE and len(cal.floor) == len(cal.names) == 65
    assert min(cal.floor) >= 1e-3
    x, dt, y, groups = build_sequences(scenarios, 8, calibration=cal)
    k = 0
    for g, s in enumerate(scenarios):
        state = None
        for i, (end, vec) in enumerate(zip(s.window_end, s.features)):
            xi, dti, state, status = history_step(state, i, float(end), vec, 8, cal)
            assert status == (CALIBRATING if i < 4 else OK)
            if status == CALIBRATING or s.in_cascade[i]:
                continue
            assert groups[k] == g and y[k] == s.label[i]
            np.testing.assert_allclose(x[k], xi, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(dt[k], dti)
            k += 1
    assert k == len(y) > 0
    assert x.shape[2] == cal.n_inputs == 65 + len(ABSOLUTE)


def test_a_baseline_window_maps_to_zero_and_a_flat_feature_to_its_floor(scenarios):
    cal = calibration_for(TrainConfig(calibration_windows=3), scenarios, FeatureExtractor.names())
    feats = np.repeat(scenarios[0].features[:1], 6, axis=0)  # a perfectly steady tenant
    bases, statuses = cal.replay(feats)
    assert statuses == [CALIBRATING] * 3 + [OK] * 3
    rel = cal.transform(feats[4], bases[4])[:65]
    assert np.all(rel == 0)  # no deviation, no blow-up: the spread is the floor, not zero
    bumped = feats[4] + np.asarray(cal.floor)
    assert np.allclose(cal.transform(bumped, bases[4])[:65], 1.0)


def test_recorded_windows_equal_the_beam_jobs_features(tmp_path):
    """The engine-free path over recorded files gives the batch job's feature rows, and
    ``score_tenant`` its predictions (what bench_generalisation reports is what the job does)."""
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--agents", "12", "--duration", "90",
                 "--tenants", "2", "--seed", "77", "--tenant", "rec"]) == 0
    files = sorted(glob.glob(str(tmp_path / "sim" / "*.ndjson")))
    got, counts = tenant_windows(files)
    assert counts["read"] == counts["windowed"] == 2 * 12 * 90 and not counts["dead"]
    out = str(tmp_path / "beam")
    assert job.run_batch(files, WindowSpec(), out, FeatureExtractor(), PredictorSpec()).reconciles
    table = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{out}/features/*/*.parquet")])
    assert set(got) == set(table.column("tenant").to_pylist()) == {"rec-0", "rec-1"}
    vecs = vectors(table)
    preds = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{out}/predictions/*/*.parquet")])
    preds = preds.to_pylist()
    predictor = OnnxPredictor()
    predictor.load_model()
    for tenant, (starts, _, feats) in got.items():
        mine = {int(round(s * 1000)): f for s, f in zip(starts, feats)}
        theirs = {int(r["window_start"].timestamp() * 1000): vecs[i]
                  for i, r in enumerate(table.select(["tenant", "window_start"]).to_pylist())
                  if r["tenant"] == tenant}
        assert set(mine) == set(theirs) and len(mine) >= 9
        for k in mine:
            np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-9, atol=1e-9)
        p, statuses = score_tenant(predictor, starts, got[tenant][1], feats)
        want = {int(r["window_start"].timestamp() * 1000): r for r in preds if r["tenant"] == tenant}
        rows = [want[int(round(s * 1000))] for s in starts]
        np.testing.assert_allclose(p, [r["probability"] for r in rows], rtol=1e-5, atol=1e-6)
        assert statuses == [r["status"] for r in rows] and OK in statuses
