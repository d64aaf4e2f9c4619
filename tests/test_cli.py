"""The `aura` command line, configuration, data-quality report and the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.config import load_run_config
from pipelines.quality import check_frame, load_frame


def test_simulate_then_run_batch_and_streaming(tmp_path, capsys):
    tele = tmp_path / "sim" / "telemetry"
    assert main(["simulate", "--agents", "40", "--duration", "60", "--seed", "3", "--tenants", "2",
                 "--out", str(tele)]) == 0
    labels = json.loads((tmp_path / "sim" / "labels.json").read_text())
    assert [d["tenant"] for d in labels["scenarios"]] == ["acme-0", "acme-1"]
    for mode in ("batch", "streaming"):
        out = tmp_path / mode
        assert main(["run", "--input", str(tele), "--mode", mode, "--out", str(out), "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["read"] == 2 * 40 * 60 == summary["windowed"]
        assert summary["windows"] == 2 * 6 and summary["reconciles"]
    printed = capsys.readouterr().out
    assert "records dead-lettered" in printed
    assert re.search(r"reconciles \(in = windowed \+ dead\)\s+yes", printed)


def test_bad_invocations_fail_clearly(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path)]) == 2
    assert "exactly one of --input" in capsys.readouterr().err
    assert main(["run", "--input", str(tmp_path / "none*.ndjson"), "--out", str(tmp_path)]) == 2
    assert "no telemetry files" in capsys.readouterr().err
    assert main(["run", "--landing", str(tmp_path), "--mode", "batch"]) == 2
    assert main(["run", "--input", "x", "--window-size", "10", "--window-slide", "20"]) == 2
    assert "slide" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    cfg = tmp_path / "aura.toml"
    cfg.write_text('[run]\ninput = "a.ndjson"\nwindow_size_s = 20\nallowed_lateness_s = 5\n')
    c = load_run_config(str(cfg), window_size_s=30.0)
    assert (c.input, c.window_size_s, c.allowed_lateness_s) == ("a.ndjson", 30.0, 5.0)
    cfg.write_text('[run]\ninput = "a"\nwindow_sise_s = 20\n')
    with pytest.raises(ValueError, match="unknown"):
        load_run_config(str(cfg))
    cfg.write_text('[run]\ninput = "a"\nwindow_size_s = "ten"\n')
    with pytest.raises(ValueError, match="bad configuration"):
        load_run_config(str(cfg))


def test_quality_suite_passes_clean_data_and_names_what_is_wrong(tmp_path, capsys):
    tele = tmp_path / "t"
    main(["simulate", "--agents", "30", "--duration", "30", "--out", str(tele)])
    df = load_frame([str(p) for p in sorted(tele.iterdir())])
    assert check_frame(df, ["acme"]).success
    bad = pd.concat([df, df.iloc[:2]], ignore_index=True)  # duplicate (agent, ts) rows
    bad.loc[0, "error_rate"] = 1.7
    bad.loc[1, "tenant"] = "intruder"
    bad.loc[2:40, "latency_p50_ms"] = None  # 39 nulls in 902 rows: above the 0.1 % allowed
    report = check_frame(bad, ["acme"])
    failed = {(r.expectation, r.column) for r in report.results if not r.success}
    assert failed == {
        ("expect_column_values_to_be_between", "error_rate"),
        ("expect_column_values_to_be_in_set", "tenant"),
        ("expect_compound_columns_to_be_unique", "tenant,agent_id,event_time"),
        ("expect_column_values_to_not_be_null", "latency_p50_ms"),
    }
    assert "FAIL" in report.render()
    assert main(["validate", str(tele), "--tenants", "acme", "--report", str(tmp_path / "r.txt")]) == 0
    assert "PASS" in (tmp_path / "r.txt").read_text()


def test_demo_shows_a_cascade_a_fizzle_and_reconciles_in_under_three_minutes(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert elapsed < 180
    labels = json.loads((tmp_path / "demo" / "labels.json").read_text())["scenarios"][0]
    assert labels["n_agents"] == 200 and labels["end"] - labels["start"] == 600
    assert len(labels["cascades"]) >= 1 and len(labels["fizzles"]) >= 1
    summary = json.loads((tmp_path / "demo" / "run" / "summary.json").read_text())
    assert summary["reconciles"] and summary["windows"] == 60
    assert summary["read"] == 200 * 600 + 7 and summary["dead_lettered"] == 7
    # the graph: every window's snapshot and topology written to the embedded server, stopped after
    assert summary["graph"]["written.snapshot"] == 60 and summary["graph"]["written.topology"] == 60
    assert not any(k.startswith("spilled") for k in summary["graph"])
    assert os.path.isdir(tmp_path / "demo" / "run" / "graph" / "databases" / "neo4j")
    assert re.search(r"reconciles \(in = windowed \+ dead\)\s+yes", proc.stdout)
