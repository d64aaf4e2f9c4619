"""The prediction model: data, export parity, the committed artifact and its predictor."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest

from models.artifact import MODEL_DIR, export_checkpoint
from models.export import parity, write_artifact
from models.sequences import build_sequences
from models.train import TrainConfig, split_scenarios, train
from pipelines.inference import ModelInfo, OnnxPredictor, PredictorSpec, sequence_at
from pipelines.topology.features import FeatureExtractor
from pipelines.training_data import DatasetConfig, build_dataset, dataset_hash

# 400 s: room for a quiet stretch and a gradual trigger; a seed whose three scenarios each
# hold a cascade, so that every split of the three has both classes (the fixture checks)
TINY = DatasetConfig(seed=2, n_scenarios=3, agents=(40,), duration_s=400.0)


@pytest.fixture(scope="module")
def tiny_data():
    data = build_dataset(TINY, workers=1)
    assert all(s.label.any() and not s.label.all() for s in data)
    return data


def test_dataset_is_reproducible_from_its_seed(tiny_data):
    again = build_dataset(TINY, workers=2)
    assert dataset_hash(again) == dataset_hash(tiny_data)
    other = build_dataset(DatasetConfig(seed=4, n_scenarios=1, agents=(40,), duration_s=200.0), workers=1)
    assert dataset_hash(other) != dataset_hash(tiny_data[:1])


def test_labels_say_whether_an_onset_follows_within_the_horizon(tiny_data):
    for s in tiny_data:
        assert s.features.shape == (len(s.window_end), len(FeatureExtractor.names()))
        np.testing.assert_array_equal(s.label, (s.time_to_onset <= TINY.horizon_s).astype(np.int8))
        assert np.all(np.diff(s.window_end) > 0)


def test_scenario_split_never_shares_a_scenario():
    tr, va, te = split_scenarios(20, 0.25, 0.2, seed=1)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert sorted([*tr, *va, *te]) == list(range(20))


def test_sequences_carry_real_elapsed_time():
    feats = np.arange(5, dtype=float)[:, None] * np.ones((1, 3))
    ends = np.array([10.0, 20.0, 40.0, 50.0, 60.0])  # the window ending at 30 is missing
    x, dt = sequence_at(feats, ends, 4, t=4)
    assert list(dt) == [10.0, 20.0, 10.0, 10.0] and list(x[:, 0]) == [1, 2, 3, 4]
    x, dt = sequence_at(feats, ends, 1, t=4)  # short history: padded, no elapsed time
    assert list(dt) == [0.0, 0.0, 10.0, 10.0] and list(x[:, 0]) == [0, 0, 0, 1]


def test_onnx_export_matches_torch(tiny_data, tmp_path):
    result = train(TrainConfig(data=TINY, epochs=2, test_fraction=0.34, val_fraction=0.5), tiny_data,
                   log=lambda *_: None)
    onnx_path, _ = write_artifact(result.model, 8, 60.0, result.data_hash, result.metrics, str(tmp_path))
    x, dt, _, _ = build_sequences(tiny_data, 8)
    assert parity(result.model, onnx_path, x, dt) < 1e-5
    g = onnx.load(onnx_path)
    assert g.ir_version == 8 and g.opset_import[0].version == 17
    assert "pr_auc" in result.metrics["cfc_test"] and "pr_auc" in result.metrics["logistic_regression_test"]


def test_committed_artifact_serves_in_process():
    pred = OnnxPredictor()
    pred.load_model()
    assert pred.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert pred.provider in pred.describe()
    info = pred.info
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, info.seq_len, info.n_features)).astype(np.float32)
    dt = np.full((5, info.seq_len), 10.0, np.float32)
    p = pred.run_inference(x, dt)
    assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))
    assert not np.allclose(p, pred.run_inference(x, dt * 3))  # elapsed time changes the answer
    with pytest.raises(ValueError, match="features must be"):
        pred.run_inference(x[:, :3], dt[:, :3])
    assert pred.batch_elements_kwargs()["max_batch_size"] >= 64


def test_export_reproduces_the_committed_artifact(tmp_path):
    onnx_path, _ = export_checkpoint(os.path.join(MODEL_DIR, "checkpoint.pt"), str(tmp_path))
    committed, fresh = OnnxPredictor(MODEL_DIR), OnnxPredictor(str(tmp_path))
    info = committed.info
    x = np.random.default_rng(1).standard_normal((16, info.seq_len, info.n_features)).astype(np.float32)
    dt = np.random.default_rng(2).uniform(0, 30, (16, info.seq_len)).astype(np.float32)
    np.testing.assert_array_equal(committed.run_inference(x, dt), fresh.run_inference(x, dt))


def test_missing_or_mismatched_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="aura train"):
        OnnxPredictor(str(tmp_path))
    assert ModelInfo.load(MODEL_DIR).feature_schema_version == 1


def test_triton_config_matches_the_onnx_graph():
    repo = os.path.join(os.path.dirname(MODEL_DIR), "..", "triton_repo", "cascade_cfc")
    with open(os.path.join(repo, "config.pbtxt")) as fh:
        text = fh.read()
    assert 'platform: "onnxruntime_onnx"' in text and "KIND_GPU" in text and "dynamic_batching" in text
    declared = {m[0]: [int(d) for d in m[1].split(",")]
                for m in re.findall(r'name: "(\w+)"\s*data_type: TYPE_FP32\s*dims: \[([\d, ]+)\]', text)}
    g = onnx.load(os.path.join(repo, "1", "model.onnx"))
    graph_dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:]  # without batch
                  for v in [*g.graph.input, *g.graph.output]}
    assert declared == graph_dims


def test_pipeline_predicts_every_window_the_same_in_batch_and_streaming(tmp_path):
    from pipelines.beam import job
    from pipelines.predictions import read_predictions
    from pipelines.windowing import WindowSpec
    from tests.test_beam_job import mixed_files

    paths, _, _ = mixed_files(tmp_path, n_files=3, seed=8)
    spec, fx = WindowSpec(10.0, None, 1000.0), FeatureExtractor()
    b = job.run_batch(paths, spec, str(tmp_path / "b"), fx, PredictorSpec())
    s = job.run_files_streaming(paths, spec, str(tmp_path / "s"), extractor=fx, predictor=PredictorSpec())
    assert b.predictions == b.feature_rows == s.predictions > 0
    key = lambda r: (r["tenant"], r["window_start"])  # noqa: E731
    pb = sorted(read_predictions(str(tmp_path / "b")).to_pylist(), key=key)
    ps = sorted(read_predictions(str(tmp_path / "s")).to_pylist(), key=key)
    assert [key(r) for r in pb] == [key(r) for r in ps]
    np.testing.assert_allclose([r["probability"] for r in pb], [r["probability"] for r in ps], atol=1e-6)
    assert all(0.0 <= r["probability"] <= 1.0 and r["horizon_s"] == 60.0 for r in pb)
    # the committed model is calibrated: each tenant's first 6 windows are "calibrating", then "ok"
    assert b.verdicts == s.verdicts and sum(b.verdicts.values()) == b.predictions
    first, seen = {}, {}
    for r in pb:
        first.setdefault(r["tenant"], r)
        n = seen[r["tenant"]] = seen.get(r["tenant"], 0) + 1
        assert r["status"] == ("calibrating" if n <= 6 else "ok")
    assert all(r["history_windows"] == 1 for r in first.values())  # a tenant's first window
