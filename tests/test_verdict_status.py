"""The verdict status end to end in the engines: with a calibrated model each tenant's first
3 windows are "calibrating" and the rest "ok" in every prediction row (Beam batch with
consensus, Beam streaming, the Flink job's window stage), counted in the run summary."""

from __future__ import annotations

import pickle
import random
import re
from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest

from pipelines.beam import job
from pipelines.cli import render_summary
from pipelines.consensus.spec import ConsensusSpec
from pipelines.inference import PredictorSpec
from pipelines.predictions import PREDICTION_ROW, read_predictions
from pipelines.run_summary import RunSummary
from pipelines.topology.features import FeatureExtractor
from pipelines.windowing import WindowSpec
from tests.calibrated_model import WINDOWS
from tests.conftest import T0


def statuses_by_tenant(out_dir: str) -> dict[str, list[str]]:
    """Each tenant's verdict statuses in window order."""
    rows = sorted(read_predictions(out_dir).to_pylist(), key=lambda r: (r["tenant"], r["window_start"]))
    out: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        out[r["tenant"]].append(r["status"])
    return dict(out)


def calibrating_then_ok(statuses: dict[str, list[str]]) -> bool:
    return all(s == ["calibrating"] * WINDOWS + ["ok"] * (len(s) - WINDOWS) and len(s) > WINDOWS
               for s in statuses.values())


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory):
    from tests.test_beam_job import mixed_files

    paths, _, _ = mixed_files(tmp_path_factory.mktemp("status-tele"), n_files=3, seed=8)
    return paths


def test_beam_batch_and_streaming_write_calibrating_then_ok(telemetry, calibrated_model_dir, tmp_path):
    spec, fx = WindowSpec(10.0, None, 1000.0), FeatureExtractor()
    pred = PredictorSpec(model_dir=calibrated_model_dir)
    consensus = ConsensusSpec(backends=(pred,) * 4)
    b = job.run_batch(telemetry, spec, str(tmp_path / "b"), fx, pred, consensus=consensus)
    s = job.run_files_streaming(telemetry, spec, str(tmp_path / "s"), extractor=fx, predictor=pred)
    sb, ss = statuses_by_tenant(str(tmp_path / "b")), statuses_by_tenant(str(tmp_path / "s"))
    assert set(sb) == {"acme", "beta"} and sb == ss and calibrating_then_ok(sb)
    n = sum(len(v) for v in sb.values())
    want = Counter(calibrating=WINDOWS * len(sb), ok=n - WINDOWS * len(sb))
    assert b.verdicts == s.verdicts == want and b.consensus["committed"] == n and b.reconciles
    assert read_predictions(str(tmp_path / "b")).schema.field("status").nullable is False
    row = rf"^verdicts +{want['ok']} ok, {WINDOWS * 2} calibrating, 0 out of distribution$"
    assert re.search(row, render_summary(b), re.M)
    assert RunSummary.from_dict(b.to_dict()).verdicts == want


def test_a_summary_from_before_verdict_statuses_still_loads():
    old = RunSummary("batch", "out", read=5, windowed=5, predictions=2).to_dict()
    del old["verdicts"]
    s = RunSummary.from_dict(old)
    assert s.verdicts == Counter() and s.predictions == 2 and s.reconciles
    assert "verdicts" not in render_summary(s)  # no made-up zeros for a run that never counted them


def test_flink_window_stage_writes_the_status_and_keeps_the_baseline_in_keyed_state(calibrated_model_dir,
                                                                                       tmp_path):
    from pipelines.flink import job as flink_job
    from pipelines.flink.assemble import join, pack
    from pipelines.flink.window_stage import StageSpec, TenantState, WindowStage
    from tests.test_windowing import random_records

    out = str(tmp_path / "flink")
    stage = WindowStage(StageSpec(out, 10_000, 10_000, FeatureExtractor(),
                                  PredictorSpec(model_dir=calibrated_model_dir)))
    recs = random_records(random.Random(3), 400, tenants=("acme",))
    state, ledgers = TenantState(), []
    for k in range(5):
        start = int(T0 * 1000) + k * 10_000
        window = join([pack(r) for r in recs if start <= r["event_time"] * 1000 < start + 10_000])
        ledgers.append(stage.process("acme", start, start + 10_000, *window, state))
        state = pickle.loads(pickle.dumps(state))  # Flink keeps it as pickled keyed state
    stage.close()
    assert [x["status"] for x in ledgers] == ["calibrating"] * WINDOWS + ["ok"] * 2
    assert statuses_by_tenant(out) == {"acme": ["calibrating"] * WINDOWS + ["ok"] * 2}
    assert state.history.baseline.frozen
    assert flink_job.summarize(out, []).verdicts == Counter(calibrating=WINDOWS, ok=2)
    path = sorted((tmp_path / "flink" / "predictions" / "tenant=acme").iterdir())[0]
    assert pq.read_schema(path).field("status") == PREDICTION_ROW.field("status")
