"""infra/prometheus/ checked by Prometheus' own promtool (Debian's 2.42): the rules and the
example configuration are valid, and the rules' unit tests (infra/prometheus/tests/
rules_test.yml: synthetic series, each alert firing when it should and not for look-alikes,
before its ``for:`` has passed, or after the cause is gone) pass. That the unit tests assert
behaviour is shown by breaking one rule at a time: each broken copy fails them. A missing
promtool fails these tests (``make`` installs it), it does not skip them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.config import ApiConfig

PROMTOOL = "/usr/bin/promtool"
ROOT = Path(__file__).resolve().parents[1] / "infra" / "prometheus"
RULES, CONFIG, UNIT_TESTS = ROOT / "rules.yml", ROOT / "prometheus.yml", ROOT / "tests" / "rules_test.yml"
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert Path(PROMTOOL).is_file(), f"{PROMTOOL} missing: `make` installs Debian's prometheus"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def test_the_rules_are_valid():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_the_example_configuration_is_valid_and_scrapes_the_services_default_port():
    out = promtool("check", "config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["rule_files"] == ["rules.yml"] and cfg["alerting"]["alertmanagers"]
    (aura,) = [s for s in cfg["scrape_configs"] if s["job_name"] == "aura"]
    assert aura["static_configs"][0]["targets"] == [f"127.0.0.1:{ApiConfig().port}"]
    assert aura["metrics_path"] == "/metrics"


def test_every_alert_is_labelled_annotated_and_unit_tested_both_ways():
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    checks = [c for t in cases for c in t.get("alert_rule_test", [])]
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        mine = [c for c in checks if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no unit test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no unit test where it must not fire"
    tenant_alerts = [n for n, r in alerts().items() if "tenant" in r["expr"]]
    for name in tenant_alerts:  # per-tenant alerts say which tenant
        assert "$labels.tenant" in alerts()[name]["annotations"]["summary"], name


def test_the_unit_tests_pass():
    out = promtool("test", "rules", str(UNIT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# one rule broken at a time: (alert, field, broken value, what the unit tests must then catch)
BROKEN = [
    ("AuraTenantRiskHigh", "expr", "aura_tenant_risk >= 0.7", "untrusted (calibrating) verdicts page"),
    ("AuraDeadLetterSpike", "expr", "tenant:aura_records_dead_letter_ratio:rate5m > 0.05", "a trickle pages"),
    ("AuraWatermarkLagGrowing", "expr", "aura_watermark_lag_seconds > 120", "a steady lag pages"),
    ("AuraLandingBacklogGrowing", "expr", "aura_landing_backlog_files > 20", "a draining backlog pages"),
    ("AuraVerdictLatencyHigh", "for", "1m", "pages before 10 minutes"),
    ("AuraChildCrashLooping", "expr", "increase(aura_service_child_restarts_total[15m]) > 0",
     "one restart pages"),
    ("AuraConsensusDisputes", "expr", 'sum by (tenant) (aura_verdicts_total{outcome="disputed"}) > 0',
     "never resolves"),
    ("AuraGraphSpilling", "expr", 'sum(aura_graph_writes_total{outcome="spilled"}) > 0', "never resolves"),
    ("AuraDown", "expr", "up == 0", "pages for other jobs"),
]


@pytest.mark.parametrize(("alert", "field", "value", "why"), BROKEN, ids=[b[0] for b in BROKEN])
def test_the_unit_tests_catch_a_broken_rule(tmp_path, alert, field, value, why):
    doc = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert rule[field] != value
    rule[field] = value
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "tests").mkdir()
    shutil.copy(UNIT_TESTS, tmp_path / "tests" / UNIT_TESTS.name)
    out = promtool("test", "rules", str(tmp_path / "tests" / UNIT_TESTS.name))
    assert out.returncode != 0, f"the unit tests did not notice that {alert} {why}"
    assert f"alertname: {alert}" in out.stdout + out.stderr, out.stdout + out.stderr
