"""One running ``aura api`` with data, shared by the tests that read a live service's
``/metrics`` (tests/test_grafana_dashboards.py, tests/test_prometheus_e2e.py). A test module
loads it with ``pytest_plugins = ["tests.service_fixture"]`` and asks for ``live_service``.

The service (spool worker, streaming job with consensus, embedded graph server, alert
service) is started once as a process, fed two minutes of a simulated 20-agent fleet's
native telemetry plus records the contract rejects (``aura demo``'s ``fault_lines``), and
waited on until the tenant's latest committed verdict is trusted (past calibration): about
40 s on two cores. It is stopped by PID (SIGTERM: it drains) after the last collected module
that uses it, or at the end of the session; between two modules that use it, it idles (about
3 % of a core and 1 GB), cheaper than starting a second one."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.cli import fault_lines
from pipelines.service.launch import ApiProcess
from pipelines.simulation.output import simulate_to_dir
from pipelines.simulation.scenario import Scenario, ScenarioConfig

TENANT = "acme"  # fault_lines() names it too
AGENTS, DURATION_S = 20, 120.0
READY_TIMEOUT_S = 180.0


@dataclass
class LiveService:
    api: ApiProcess
    tenant: str
    lines_sent: int

    @property
    def url(self) -> str:
        return self.api.url

    def metrics_text(self) -> str:
        r = httpx.get(self.url + "/metrics", timeout=10.0)
        r.raise_for_status()
        return r.text

    def metric_families(self) -> list:
        """``/metrics`` parsed by prometheus-client's own exposition parser."""
        return list(text_string_to_metric_families(self.metrics_text()))

    def risk(self) -> dict:
        r = httpx.get(f"{self.url}/v1/tenants/{self.tenant}/risk", timeout=10.0)
        return r.json() if r.status_code == 200 else {}


def _feed(url: str) -> int:
    """The fleet's telemetry, ten seconds of event time a request, then the bad records."""
    sent = 0
    cfg = ScenarioConfig(n_agents=AGENTS, duration_s=DURATION_S, tenant=TENANT, seed=3)
    with httpx.Client(base_url=url, timeout=60.0) as client, tempfile.TemporaryDirectory() as outbox:
        def send(path: str, rows: int) -> None:
            nonlocal sent
            client.post("/v1/telemetry", content=Path(path).read_bytes(),
                        headers={"Content-Type": "application/x-ndjson"}).raise_for_status()
            os.unlink(path)
            sent += rows

        simulate_to_dir(Scenario(cfg), outbox, "ndjson", 10.0, 0.0, send)
        bad = fault_lines()
        client.post("/v1/telemetry", content=bad).raise_for_status()
    return sent + bad.count(b"\n")


def start_live_service(data_dir: str) -> LiveService:
    """Start, feed and wait until the tenant's latest verdict is committed and trusted."""
    api = ApiProcess(data_dir, ("--default-tenant", TENANT)).start()
    try:
        svc = LiveService(api, TENANT, _feed(api.url))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            risk = svc.risk()
            if risk.get("committed") and risk.get("status") == "ok":
                return svc
            time.sleep(1.0)
        raise TimeoutError(f"no trusted committed verdict for {TENANT} in {READY_TIMEOUT_S:.0f} s; "
                           f"last: {svc.risk()}; see {api.log_path}")
    except BaseException:
        api.stop(60.0)
        raise


class _Holder:
    """Starts the service on first use, stops it when told (a later use starts a new one)."""

    def __init__(self, root: Path):
        self.root, self.service, self.starts = root, None, 0

    def get(self) -> LiveService:
        if self.service is None:
            self.starts += 1
            self.service = start_live_service(str(self.root / f"svc-{self.starts}"))
        return self.service

    def stop(self) -> None:
        svc, self.service = self.service, None
        if svc is not None:
            rc = svc.api.stop(120.0)
            assert rc == 0, f"aura api exited with {rc}; see {svc.api.log_path}"


@pytest.fixture(scope="session")
def _live_service_holder(tmp_path_factory) -> Iterator[_Holder]:
    holder = _Holder(tmp_path_factory.mktemp("live-service"))
    yield holder
    holder.stop()


@pytest.fixture(scope="module")
def live_service(_live_service_holder, request) -> Iterator[LiveService]:
    """The shared service; stopped after this module when no later collected module uses it."""
    yield _live_service_holder.get()
    users = [item for item in request.session.items if "live_service" in item.fixturenames]
    if not users or users[-1].module is request.module:
        _live_service_holder.stop()
