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
    from pipelines.consensus.spec import ConsensusSpec
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


# -- the operator chooses the split of recorded telemetry (issue 18, item 5) -------------------
# shop33-0 .. shop33-5 all hash to validation under the fallback rule (a hash of the name)
SIX = [f"shop33-{i}" for i in range(6)]


@pytest.fixture(scope="module")
def six_tenants(tmp_path_factory) -> str:
    """Six small recorded fleets (40 agents: a fleet size training never saw), no split in
    the labels."""
    tele = str(tmp_path_factory.mktemp("six") / "telemetry")
    assert main(["simulate", "--out", tele, "--agents", "40", "--duration", "120", "--tenants", "6",
                 "--seed", "5200", "--format", "parquet", "--tenant", "shop33"]) == 0
    return tele


def test_backtest_refuses_a_one_sided_split_before_any_work(six_tenants, tmp_path, monkeypatch, capsys):
    """Tenants that all land in validation stop the run before any windowing or feature
    work, naming each tenant's split and the flags that choose it."""
    from pipelines.backtest import run as bt

    def no_work(*_a, **_k):
        raise AssertionError("windowing/feature work started before the split was checked")

    monkeypatch.setattr(bt, "fit_windows", no_work)
    monkeypatch.setattr(bt, "_run", no_work)
    capsys.readouterr()
    assert main(["backtest", "--out", str(tmp_path / "bt"), "--input", six_tenants, *QUICK]) == 2
    err = capsys.readouterr().err
    assert "hash of the tenant name" in err and "no test tenants" in err
    assert all(f"{t} -> validation" in err for t in SIX)
    assert "--validation-tenants" in err and "--test-tenants" in err
    assert not os.path.exists(tmp_path / "bt" / "pipeline")


def test_input_splits_flags_over_labels_over_hash():
    """--validation-tenants/--test-tenants (names or globs) win over the labels' split, which
    wins over the hash; a glob matching nothing, a tenant in both and an empty split are errors."""
    from pipelines.backtest.run import input_splits

    docs = [{"tenant": t, "split": "calibration" if t < "shop33-3" else "evaluation"} for t in SIX]
    assert input_splits(docs) == {t: "validation" if t < "shop33-3" else "test" for t in SIX}
    both = input_splits(docs, ("shop33-[01]",), ("shop33-2", "shop33-4"))
    assert both == {"shop33-0": "validation", "shop33-1": "validation",
                    "shop33-2": "test", "shop33-4": "test"}
    assert input_splits(docs, ("shop33-5",)) == {t: "validation" if t == "shop33-5" else "test" for t in SIX}
    assert input_splits(docs, (), ("*-0",)) == {t: "test" if t == "shop33-0" else "validation" for t in SIX}
    with pytest.raises(ValueError, match=r"--test-tenants 'nope\*' matches no tenant"):
        input_splits(docs, ("shop33-0",), ("nope*",))
    with pytest.raises(ValueError, match=r"both --validation-tenants and --test-tenants: \['shop33-1'\]"):
        input_splits(docs, ("shop33-[01]",), ("shop33-1",))
    with pytest.raises(ValueError, match="no test tenants"):
        input_splits(docs, ("shop33-*",))
    with pytest.raises(ValueError, match="no validation tenants"):
        input_splits([{"tenant": t, "split": "evaluation"} for t in SIX])
    logged: list[str] = []
    input_splits([{"tenant": f"t{i}"} for i in range(20)], log=logged.append)
    assert "hash of the tenant name" in logged[0]


def _windows(tenant: str, family: str):
    import numpy as np

    from pipelines.backtest.scoring import ScenarioWindows

    ends = 1000.0 + 10.0 * np.arange(1, 61)
    return ScenarioWindows(tenant, family, 40, "layered", ends, np.zeros((60, 3)), np.array([1300.0]),
                           np.array([1400.0]), np.array([1250.0]), 600.0, 60.0)


@pytest.mark.parametrize("families", [("out_of_distribution",), ("in_distribution",),
                                      ("in_distribution", "out_of_distribution")])
def test_only_the_splits_that_exist_are_reported(families):
    """A family subset of the test split is reported only beside the other family: alone it
    would be a copy of ``test``."""
    import numpy as np

    from pipelines.backtest.run import evaluate, headline

    val = [_windows(f"v{i}", "in_distribution") for i in range(2)]
    test = [_windows(f"t{i}", families[i % len(families)]) for i in range(4)]
    rng = np.random.default_rng(0)
    m = evaluate({"aura_cfc": {s.tenant: rng.uniform(size=60) for s in val + test}}, val, test, 1.0)
    want = {"validation", "test"} | ({"test_in_distribution", "test_out_of_distribution"}
                                     if len(families) == 2 else set())
    assert set(m["methods"]["aura_cfc"]) == want == set(m["fleet"]["methods"]["aura_cfc"])
    assert ("test_out_of_distribution" in headline(m)) == (len(families) == 2)


def test_backtest_recorded_operator_chooses_the_split(six_tenants, out_dir, capsys):
    """The flags choose validation and test (a tenant in neither is reported, not scored);
    the test split is one family, so metrics.json, report.html and the headline show only
    validation and test."""
    capsys.readouterr()
    rc = main(["backtest", "--out", out_dir, "--input", six_tenants, "--no-consensus",
               "--validation-tenants", "shop33-[01]", "--test-tenants", "shop33-2,shop33-3,shop33-4", *QUICK])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "--validation-tenants/--test-tenants" in printed and "not scored: shop33-5" in printed
    assert "test_out_of_distribution" not in printed and "test_in_distribution" not in printed
    assert "test (3 scenarios, all out_of_distribution)" in printed
    with open(os.path.join(out_dir, "metrics.json")) as fh:
        m = json.load(fh)
    assert m["run"]["splits"] == {"validation": SIX[:2], "test": SIX[2:5]}
    assert m["run"]["unassigned_tenants"] == ["shop33-5"]
    assert m["run"]["split_by"] == "--validation-tenants/--test-tenants"
    for name in METHODS:
        assert set(m["methods"][name]) == {"validation", "test"} == set(m["fleet"]["methods"][name])
    with open(os.path.join(out_dir, "report.html")) as fh:
        page = fh.read()
    assert "test out of distribution" not in page and "test in distribution" not in page
    assert "test (3 scenarios, all out_of_distribution)" in page
