"""`aura backtest` end to end on a few short scenarios: simulated on the fly, and recorded
(Parquet + labels file); metrics.json and report.html contents."""

from __future__ import annotations

import json
import os

import pytest

from pipelines.cli import main

METHODS = {"aura_cfc", "static_threshold", "early_warning_signals", "isolation_forest", "logistic_regression",
           "cfc_no_topology"}
QUICK = ["--fit-scenarios", "6", "--fit-duration", "150", "--ablation-epochs", "2", "--no-progress",
         "--timelines", "2"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("backtest") / "bt")


def test_backtest_simulated_end_to_end(out_dir, capsys):
    rc = main(["backtest", "--out", out_dir, "--val-seeds", "1000-1001", "--test-seeds", "2000",
               "--ood-seeds", "3000", "--duration", "200", *QUICK])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "the bar (pooled test split)" in printed and "aura_cfc" in printed
    with open(os.path.join(out_dir, "metrics.json")) as fh:
        m = json.load(fh)
    assert set(m["methods"]) == METHODS == set(m["thresholds"])
    for name in METHODS:
        splits = {"validation", "test", "test_in_distribution", "test_out_of_distribution"}
        assert splits <= set(m["methods"][name])
        test = m["methods"][name]["test"]
        assert test["scenarios"] == 2 and set(test["per_scenario"]) == {"id-2000", "ood-3000"}
        op = test["at_threshold"]["operating"]
        parts = op["true_alarm_windows"] + op["false_alarm_windows"] + op["late_alarm_windows"]
        assert op["alarm_windows"] == parts
        assert op["onsets"] == op["onsets_warned"] + op["onsets_late_only"] + op["onsets_missed"]
        assert set(m["thresholds"][name]) == {"operating", "best_f1"}
    run = m["run"]
    assert run["families"]["ood-3000"] == {"family": "out_of_distribution", "n_agents": 400,
                                           "graph": run["families"]["ood-3000"]["graph"]}
    assert run["families"]["id-2000"]["family"] == "in_distribution"
    p = run["pipeline"]
    assert p["reconciles"] and p["events"] == p["counts"]["read"] > 0
    assert p["committed"] == p["counts"]["windows"] == 80 and p["disputed"] == 0  # 4 x 200 s of 10 s windows
    assert p["scored_windows_without_committed_verdict"] == 0
    assert set(m["bar"]) >= {"pr_auc", "best_baseline", "pr_auc_margin", "event_recall_at_operating",
                             "median_lead_time_s", "met"}
    with open(os.path.join(out_dir, "report.html")) as fh:
        page = fh.read()
    assert page.count("data:image/png;base64,") == 2 + 2  # PR curves, lead times, 2 timelines
    assert "<table>" in page and all(name in page for name in METHODS)
    assert "http://" not in page and "https://" not in page  # self-contained


def test_backtest_recorded_parquet_with_labels(out_dir, tmp_path, capsys):
    """Recorded telemetry plus its labels file; the fit split and ablation come from the cache.
    The labels miss one tenant of the telemetry and name one that has none: both are reported
    (log line and metrics.json), the rest is scored, and the tenants reconcile."""
    tele = str(tmp_path / "rec" / "telemetry")
    assert main(["simulate", "--out", tele, "--agents", "60", "--duration", "120", "--tenants", "5",
                 "--seed", "5000", "--format", "parquet", "--tenant", "rec"]) == 0
    labels = str(tmp_path / "rec" / "labels.json")
    with open(labels) as fh:
        doc = json.load(fh)
    ghost = dict(doc["scenarios"][0], tenant="ghost")
    doc["scenarios"] = [d for d in doc["scenarios"] if d["tenant"] != "rec-4"] + [ghost]
    with open(labels, "w") as fh:
        json.dump(doc, fh)
    capsys.readouterr()
    rc = main(["backtest", "--out", out_dir, "--input", tele, "--no-consensus", *QUICK])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cached" in printed
    assert "not scored: 1 tenants with telemetry but no labels ['rec-4'], 1 labelled tenants without " \
           "telemetry ['ghost']" in printed
    with open(os.path.join(out_dir, "metrics.json")) as fh:
        m = json.load(fh)
    splits = m["run"]["splits"]
    assert sorted(splits["validation"] + splits["test"]) == [f"rec-{i}" for i in range(4)]
    assert splits["validation"] and splits["test"]
    tenants = m["run"]["tenants"]
    assert tenants == {"scored": [f"rec-{i}" for i in range(4)], "telemetry_without_labels": {"rec-4": 12},
                       "labels_without_telemetry": ["ghost"]}
    assert m["run"]["pipeline"]["reconciles"] and m["run"]["pipeline"]["events"] == 5 * 60 * 120
    assert "off" in m["run"]["pipeline"]["consensus"]
    assert m["run"]["pipeline"]["scored_windows_without_committed_verdict"] == 0  # every window predicted


def test_backtest_recorded_with_named_splits_reports_the_on_call_view(out_dir, tmp_path, capsys):
    """Labels that name each tenant's split (as the testbed corpus writes them): calibration
    runs fit the thresholds, evaluation runs are the test split; the on-call view (false
    alarms per quiet hour, onsets warned between trigger and onset) is in metrics.json and
    printed for every method."""
    tele = str(tmp_path / "rec" / "telemetry")
    assert main(["simulate", "--out", tele, "--agents", "60", "--duration", "120", "--tenants", "4",
                 "--seed", "5100", "--format", "parquet", "--tenant", "cor"]) == 0
    labels = str(tmp_path / "rec" / "labels.json")
    with open(labels) as fh:
        doc = json.load(fh)
    for d in doc["scenarios"]:
        d["split"] = "calibration" if d["tenant"] in ("cor-0", "cor-1") else "evaluation"
    with open(labels, "w") as fh:
        json.dump(doc, fh)
    rc = main(["backtest", "--out", out_dir, "--input", tele, "--no-consensus", *QUICK])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test, as on call" in printed and "validation, as on call" in printed
    with open(os.path.join(out_dir, "metrics.json")) as fh:
        m = json.load(fh)
    assert m["run"]["splits"] == {"validation": ["cor-0", "cor-1"], "test": ["cor-2", "cor-3"]}
    fleet = m["fleet"]
    assert set(fleet["methods"]) == METHODS == set(fleet["thresholds"])
    for by_split in fleet["methods"].values():
        t = by_split["test"]
        assert t["onsets"] == t["warned"] + t["late"] + t["missed"]
        assert t["quiet_hours"] <= 2 * 120 / 3600 + 1e-9


def test_backtest_refuses_a_broken_labels_file(tmp_path, capsys):
    """A labels file that cannot be scored stops the run before any pipeline starts, with the
    tenant and the field in the message."""
    tele = str(tmp_path / "rec" / "telemetry")
    assert main(["simulate", "--out", tele, "--agents", "20", "--duration", "20", "--seed", "5001",
                 "--tenant", "broken"]) == 0
    labels = str(tmp_path / "rec" / "labels.json")
    with open(labels) as fh:
        doc = json.load(fh)
    doc["scenarios"][0]["cascades"] = [{"trigger_time": doc["scenarios"][0]["start"], "end": 0}]
    with open(labels, "w") as fh:
        json.dump(doc, fh)
    capsys.readouterr()
    assert main(["backtest", "--out", str(tmp_path / "bt"), "--input", tele, *QUICK]) == 2
    err = capsys.readouterr().err
    assert f"{labels}: scenario 0 (tenant 'broken'): cascades[0]: missing onset" in err
    assert not os.path.exists(tmp_path / "bt" / "pipeline")


def test_fit_split_in_several_runs_equals_one_run(tmp_path, monkeypatch):
    """The fit split goes through the pipeline a few scenarios at a time (memory); the
    windows, features and counts are those of one run over all of them."""
    import numpy as np

    from pipelines.backtest import run as bt
    from pipelines.topology.features import FeatureExtractor
    from pipelines.windowing import WindowSpec

    _, train_cfg = bt.model_training(_model_dir())
    results = {}
    for per_run in (100, 2):
        monkeypatch.setattr(bt, "SCENARIOS_PER_RUN", per_run)
        cfg = bt.BacktestConfig(out=str(tmp_path / str(per_run)), fit_scenarios=3, fit_duration_s=60.0,
                                cache=False, progress=False)
        results[per_run] = bt.fit_windows(cfg, train_cfg, WindowSpec(), FeatureExtractor(), lambda *_: None)
    (one, info_one), (parts, info_parts) = results[100], results[2]
    assert [s.tenant for s in parts] == [s.tenant for s in one] and len(one) == 3
    for a, b in zip(one, parts):
        assert np.array_equal(a.window_end, b.window_end) and np.allclose(a.features, b.features, atol=1e-12)
    assert info_parts["events"] == info_one["events"] > 0
    assert info_parts["reconciles"] and info_one["reconciles"]
    assert info_parts["data_sha256"] == info_one["data_sha256"]


def _model_dir() -> str:
    from models.artifact import MODEL_DIR

    return MODEL_DIR


def test_evaluation_in_several_runs_equals_one_run(tmp_path, monkeypatch):
    """Evaluation scenarios also go through the pipeline a few at a time: with prediction
    and consensus, the merged results equal one run's (features, committed verdicts, counts)."""
    import numpy as np

    from pipelines.backtest import run as bt
    from pipelines.beam.consensus import ConsensusSpec
    from pipelines.consensus.validator import RiskBands
    from pipelines.inference import PredictorSpec
    from pipelines.simulation.scenario import ScenarioConfig
    from pipelines.topology.features import FeatureExtractor
    from pipelines.windowing import WindowSpec

    scenarios = [ScenarioConfig(n_agents=60, duration_s=80.0, seed=4000 + i, tenant=f"e-{i}")
                 for i in range(3)]
    predictor = PredictorSpec("onnx", _model_dir())
    consensus = ConsensusSpec((predictor,) * 4, 1e-4, RiskBands(), 256)
    cfg = bt.BacktestConfig(out=str(tmp_path), progress=False)
    got = {}
    for per_run in (100, 2):
        monkeypatch.setattr(bt, "SCENARIOS_PER_RUN", per_run)
        got[per_run] = bt._run(scenarios, WindowSpec(), str(tmp_path / str(per_run)), FeatureExtractor(),
                               predictor, consensus, cfg, "eval")
    one, parts = got[100], got[2]
    assert sorted(parts.features) == sorted(one.features) == [f"e-{i}" for i in range(3)]
    for t in one.features:
        assert np.array_equal(one.features[t][0], parts.features[t][0])
        assert np.allclose(one.features[t][2], parts.features[t][2], atol=1e-12)
    assert one.predictions.keys() == parts.predictions.keys() and len(one.predictions) == 3 * 8
    assert all(one.predictions[k]["probability"] == parts.predictions[k]["probability"]
               for k in one.predictions)
    assert parts.counts == one.counts and parts.reconciles and parts.read > 0
    assert sorted(d["tenant"] for d in parts.labels) == sorted(d["tenant"] for d in one.labels)
    with pytest.raises(ValueError, match="in both runs"):
        parts.merge(one)
