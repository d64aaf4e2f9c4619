"""A real Prometheus (Debian's 2.42, a child process on a free port, 1 s scrape and
evaluation intervals) scrapes a running ``aura api`` with data (tests/service_fixture.py),
evaluates infra/prometheus/rules.yml and sends what fires to a real Alertmanager (Debian's
0.25). A PromQL query over Prometheus' HTTP API returns the tenant's ``aura_tenant_risk``
(the value the service's own API gives), and records the telemetry contract rejects, posted
to the service, raise ``AuraDeadLetterSpike`` for that tenant in Alertmanager, which did not
fire while the service only had a few bad records among thousands.

The rules are loaded as committed except that every ``for:`` is rewritten to 0s: production
holds alerts for minutes, too long for a test. Expressions and thresholds are unchanged.
A missing binary fails these tests (``make`` installs it), it does not skip them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from pipelines.alerts.alertmanager_server import AlertmanagerProcess, free_port
from pipelines.service.processes import terminate
from pipelines.simulation.scenario import ScenarioConfig
from tests.service_fixture import DURATION_S, LiveService

pytest_plugins = ["tests.service_fixture"]

PROMETHEUS = "/usr/bin/prometheus"
RULES = Path(__file__).resolve().parents[1] / "infra" / "prometheus" / "rules.yml"
SPIKE = 300  # bad records posted at once: far above the rule's 5 % and 0.1/s
END_S = ScenarioConfig.start_epoch_s + DURATION_S  # the fixture fleet's last second of event time


class PrometheusProcess:
    """One Prometheus on ``127.0.0.1:<port>`` with its own storage, stopped by its PID."""

    def __init__(self, root: Path, config: dict, rules: dict):
        assert Path(PROMETHEUS).is_file(), f"{PROMETHEUS} missing: `make` installs Debian's prometheus"
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (root / "prometheus.yml").write_text(json.dumps({**config, "rule_files": ["rules.yml"]}))
        self.log_path = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> PrometheusProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                [PROMETHEUS, f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 f"--web.external-url={self.url}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready on {self.port}: {self.log_path.read_text()[-2000:]}")

    def stop(self, grace_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        terminate(proc, grace_s)

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5.0)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def alerts(self, name: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/alerts", timeout=5.0)
        r.raise_for_status()
        return [a for a in r.json()["data"]["alerts"] if a["labels"]["alertname"] == name]

    def rule(self, name: str) -> dict:
        r = httpx.get(f"{self.url}/api/v1/rules", timeout=5.0)
        r.raise_for_status()
        (rule,) = [x for g in r.json()["data"]["groups"] for x in g["rules"] if x["name"] == name]
        return rule


Stack = tuple[PrometheusProcess, AlertmanagerProcess]


def without_for(doc: dict) -> dict:
    """The rules with every ``for:`` set to 0s (nothing else changed)."""
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    return doc


def wait_for(what: Callable, timeout_s: float, message: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{message} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def stack(live_service: LiveService, tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("prometheus-e2e")
    am = AlertmanagerProcess(str(root / "am"), webhook_url=None, group_wait="0s", group_interval="1s").start()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
              "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am.port}"]}]}]},
              "scrape_configs": [{"job_name": "aura", "metrics_path": "/metrics",
                                  "static_configs": [{"targets": [f"127.0.0.1:{live_service.api.port}"]}]}]}
    prom = None
    try:
        prom = PrometheusProcess(root / "prom", config, without_for(yaml.safe_load(RULES.read_text())))
        yield prom.start(), am
    finally:
        try:
            if prom is not None:
                prom.stop()
        finally:
            am.stop()
    assert not am.running and prom.proc is None


def test_prometheus_scrapes_the_tenants_risk(stack, live_service: LiveService):
    prom, _ = stack
    tenant = live_service.tenant
    wait_for(lambda: prom.query('up{job="aura"} == 1'), 30, "Prometheus did not scrape aura api")

    def same_as_the_service() -> bool:
        (series,) = prom.query(f'aura_tenant_risk{{tenant="{tenant}"}}') or [None]
        return series is not None and float(series["value"][1]) == live_service.risk()["probability"]

    wait_for(same_as_the_service, 30, f"{tenant}'s aura_tenant_risk never matched the service's risk")
    (trusted,) = prom.query(f'aura_tenant_verdict_status{{tenant="{tenant}",status="ok"}}')
    assert trusted["value"][1] == "1"  # the fixture waited for a trusted verdict
    # the rules loaded and evaluate without errors against the real series
    assert prom.rule("tenant:aura_records_read:rate5m")["health"] == "ok"
    assert prom.rule("AuraDeadLetterSpike")["health"] == "ok"


def _bad_records(n: int, tenant: str, t0: float) -> bytes:
    """Records breaking the contract (error_rate above 1): dead-lettered as out_of_range."""
    rec = {"tenant": tenant, "agent_id": "a00000", "latency_p50_ms": 10.0, "latency_p99_ms": 20.0,
           "error_rate": 1.7, "request_count": 10, "cpu": 0.5, "memory": 0.5, "queue_depth": 0,
           "in_flight": 1, "calls": []}
    return b"".join(orjson.dumps({**rec, "ts": t0 + i * 0.1}) + b"\n" for i in range(n))


def test_a_dead_letter_spike_fires_into_alertmanager(stack, live_service: LiveService):
    prom, am = stack
    tenant = live_service.tenant
    dead = f'aura_records_dead_lettered_total{{tenant="{tenant}",reason="out_of_range"}}'
    # the fixture's few bad records made the series; flat since, with thousands of good ones
    wait_for(lambda: prom.query(f"count_over_time({dead}[1m]) >= 5"), 60,
             f"Prometheus did not get five scrapes of {dead}")
    before = float(prom.query(dead)[0]["value"][1])
    assert prom.rule("AuraDeadLetterSpike")["state"] == "inactive"
    assert not prom.alerts("AuraDeadLetterSpike") and not am.alerts(alertname="AuraDeadLetterSpike")

    r = httpx.post(f"{live_service.url}/v1/telemetry", content=_bad_records(SPIKE, tenant, END_S),
                   headers={"Content-Type": "application/x-ndjson"}, timeout=30.0)
    assert r.status_code == 202, r.text
    wait_for(lambda: prom.query(f"{dead} >= {before + SPIKE}"), 60,
             f"the job did not count {SPIKE} more dead letters")
    (alert,) = wait_for(lambda: am.alerts(alertname="AuraDeadLetterSpike"), 60,
                        "AuraDeadLetterSpike did not reach Alertmanager")
    assert alert["labels"]["tenant"] == tenant and alert["labels"]["severity"] == "warning"
    assert alert["status"]["state"] == "active"
    assert f"tenant {tenant}'s records are dead-lettered" in alert["annotations"]["summary"]
    assert alert["generatorURL"].startswith(prom.url)
    (firing,) = prom.alerts("AuraDeadLetterSpike")
    assert firing["state"] == "firing" and float(firing["value"]) > 0.05
