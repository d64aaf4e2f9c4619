"""Alert delivery against a real Prometheus Alertmanager (Debian's 0.25, a child process on a
free port) routing to a real webhook receiver: alerts read back through ``GET /api/v2/alerts``
and received as webhook notifications (payload version "4"); resolve, re-send, outage, spill
and replay. A missing binary fails these tests (``make`` installs it), it does not skip them."""

from __future__ import annotations

import json
import os
import time

import pytest

from pipelines.alerts import alertmanager_server
from pipelines.alerts.alertmanager import ALERTNAME, AlertmanagerSink, Delivery, WebhookSink
from pipelines.alerts.alertmanager_server import AlertmanagerProcess, find_binary
from pipelines.alerts.service import AlertService
from tests.alerts_fixture import HEALTHY, SICK, T0_MS, WebhookReceiver, wait_until, write_window

EXTERNAL = "http://aura.test:8000"


@pytest.fixture(scope="module")
def hook():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def am(tmp_path_factory, hook):
    proc = AlertmanagerProcess(str(tmp_path_factory.mktemp("am")), webhook_url=hook.url,
                               group_wait="0s", group_interval="1s")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
    assert not proc.running


def service(out: str, url: str, **kw) -> AlertService:
    return AlertService(out, sinks=[AlertmanagerSink(url)], external_url=EXTERNAL, **kw)


def notified(hook: WebhookReceiver, status: str, **labels):
    """A webhook body (Alertmanager's notification) with an alert in ``status`` matching ``labels``."""
    def match(body):
        return body.get("version") == "4" and any(
            a["status"] == status and all(a["labels"].get(k) == v for k, v in labels.items())
            for a in body["alerts"])
    return match


def test_an_open_alert_is_in_alertmanager_and_on_the_webhook_then_resolves(tmp_path, am, hook):
    out, tenant = str(tmp_path / "out"), "t-open"
    for i in range(3):
        write_window(out, i, 0.02, tenant=tenant, features=HEALTHY)
    write_window(out, 3, 0.91, tenant=tenant, features={"unhealthy_frac": 0.02}, sick=("c",))
    svc = service(out, am.url)
    svc.poll_once()
    alerts = wait_until(lambda: am.alerts(tenant=tenant))
    iid = f"inc-{T0_MS + 30_000}"
    assert len(alerts) == 1
    a = alerts[0]
    assert a["labels"] == {"alertname": ALERTNAME, "tenant": tenant, "incident": iid, "severity": "warning",
                           "mechanism": "unknown"}
    link = f"{EXTERNAL}/v1/tenants/{tenant}/incidents/{iid}"
    assert a["annotations"]["incident"] == link and a["generatorURL"] == link
    assert a["annotations"]["risk"] == "0.910" and a["annotations"]["kind"] == "warning"
    assert a["annotations"]["implicated_agents"].startswith("c (")
    assert a["annotations"]["window"] == "2026-01-01T00:00:30.000Z/2026-01-01T00:00:40.000Z"
    assert "fleet still healthy" in a["annotations"]["summary"] and a["status"]["state"] == "active"
    body = hook.wait_for(notified(hook, "firing", tenant=tenant))
    assert body["status"] == "firing" and body["commonLabels"]["alertname"] == ALERTNAME
    got = [x for x in body["alerts"] if x["labels"]["tenant"] == tenant][0]
    assert got["annotations"]["incident"] == link and got["generatorURL"] == link

    write_window(out, 4, 0.01, tenant=tenant, features=SICK, sick=("b", "c"))  # the cascade starts
    svc.poll_once()
    crit = wait_until(lambda: am.alerts(tenant=tenant, severity="critical"))
    assert crit[0]["labels"]["mechanism"] == "unknown" and crit[0]["startsAt"] == a["startsAt"]
    assert "Cascade in progress" in crit[0]["annotations"]["summary"]
    wait_until(lambda: not am.alerts(tenant=tenant, severity="warning"))  # the warning one was ended
    hook.wait_for(notified(hook, "firing", tenant=tenant, severity="critical"))

    for i in range(5, 8):
        write_window(out, i, 0.01, tenant=tenant, features=HEALTHY)
    svc.poll_once()
    wait_until(lambda: not am.alerts(tenant=tenant))
    body = hook.wait_for(notified(hook, "resolved", tenant=tenant, severity="critical"))
    done = [x for x in body["alerts"] if x["labels"]["tenant"] == tenant][0]
    assert done["annotations"]["status"] == "resolved" and done["endsAt"] >= done["startsAt"]
    c = svc.counters()
    assert (c["alerts_open"], c["alerts_update"], c["alerts_resolve"]) == (1, 1, 1)
    assert c["alerts_sent"] == 4 and c["alerts_failed"] == c["spill_pending"] == 0  # open, end+new, end
    svc.stop()


def test_firing_alerts_are_resent_before_they_expire_and_expire_when_not(tmp_path, am):
    out, tenant = str(tmp_path / "out"), "t-resend"
    write_window(out, 0, 0.95, tenant=tenant, features=HEALTHY)
    svc = service(out, am.url, resend_interval_s=0.4, ttl_s=1.5, poll_interval_s=0.05).start()
    wait_until(lambda: am.alerts(tenant=tenant))
    time.sleep(3.0)  # twice the TTL: only the re-sends keep it active
    assert am.alerts(tenant=tenant)[0]["status"]["state"] == "active"
    resent = svc.counters()["alerts_resent"]
    assert resent >= 5
    svc.stop()
    wait_until(lambda: not am.alerts(tenant=tenant), timeout_s=5.0)  # endsAt passed: resolved by Alertmanager


def test_alertmanager_down_alerts_are_spilled_then_replayed_none_lost(tmp_path, hook):
    out, tenant = str(tmp_path / "out"), "t-outage"
    down = AlertmanagerProcess(str(tmp_path / "am2"), webhook_url=hook.url)  # not started yet
    svc = service(out, down.url, resend_interval_s=3600)
    svc.delivery.down_for_s = 0.0
    write_window(out, 0, 0.93, tenant=tenant, features=HEALTHY)
    write_window(out, 1, 0.88, tenant=f"{tenant}-b", features=SICK)
    svc.poll_once()
    c = svc.counters()
    assert c["alerts_failed"] == c["alerts_spilled"] == c["spill_pending"] == 2
    assert c["delivery_errors"] == 3 and c["alerts_sent"] == 0  # three tries with backoff
    with open(os.path.join(out, "alerts", "spill.ndjson")) as fh:
        spilled = [json.loads(x) for x in fh]
    assert len(spilled) == 1 and "ConnectError" in spilled[0]["error"]
    assert {a["labels"]["tenant"] for a in spilled[0]["alerts"]} == {tenant, f"{tenant}-b"}
    write_window(out, 2, 0.1, tenant=tenant, features=SICK)  # becomes a cascade while it is down
    svc.poll_once()
    assert svc.counters()["spill_pending"] == 4  # end warning + critical
    down.start()
    try:
        assert svc.replay_spill() == 4
        c = svc.counters()
        assert c["alerts_replayed"] == 4 and c["spill_pending"] == 0
        alerts = down.alerts()
        assert {(a["labels"]["tenant"], a["labels"]["severity"]) for a in alerts} == {
            (tenant, "critical"), (f"{tenant}-b", "critical")}
        hook.wait_for(notified(hook, "firing", tenant=f"{tenant}-b"))
        with open(os.path.join(out, "alerts", "spill.ndjson")) as fh:
            assert fh.read() == ""
    finally:
        down.stop()


def test_a_replayed_alert_that_still_fires_gets_a_fresh_end_time(tmp_path, hook):
    out, tenant = str(tmp_path / "out"), "t-stale"
    am2 = AlertmanagerProcess(str(tmp_path / "am4"), webhook_url=hook.url)
    svc = service(out, am2.url, resend_interval_s=100, ttl_s=101)
    svc.delivery.down_for_s = 0.0
    write_window(out, 0, 0.93, tenant=tenant, features=HEALTHY)
    svc.poll_once()
    spill = os.path.join(out, "alerts", "spill.ndjson")
    with open(spill) as fh:
        entry = json.loads(fh.readline())
    entry["alerts"][0]["endsAt"] = "2020-01-01T00:00:00.000Z"  # a long outage: the copy has expired
    with open(spill, "w") as fh:
        fh.write(json.dumps(entry) + "\n")
    am2.start()
    try:
        assert svc.replay_spill() == 1
        alert = am2.alerts(tenant=tenant)[0]
        assert alert["status"]["state"] == "active" and alert["endsAt"] > alert["updatedAt"]
    finally:
        am2.stop()


def test_a_delivery_replays_the_spill_first_in_order(tmp_path, hook):
    out, tenant = str(tmp_path / "out"), "t-order"
    am2 = AlertmanagerProcess(str(tmp_path / "am3"), webhook_url=hook.url)
    svc = service(out, am2.url, resend_interval_s=3600)
    svc.delivery.down_for_s = 0.0
    write_window(out, 0, 0.93, tenant=tenant, features=HEALTHY)
    svc.poll_once()  # open: spilled
    for i in range(1, 4):
        write_window(out, i, 0.01, tenant=tenant, features=HEALTHY)
    svc.poll_once()  # resolve: spilled behind it
    assert svc.counters()["spill_pending"] == 2
    am2.start()
    try:
        write_window(out, 4, 0.97, tenant=f"{tenant}-new", features=HEALTHY)
        svc.poll_once()  # the next delivery replays open, then resolve, then sends the new one
        c = svc.counters()
        assert (c["alerts_replayed"], c["alerts_sent"], c["spill_pending"]) == (2, 1, 0)
        alerts = am2.alerts()
        assert [a["labels"]["tenant"] for a in alerts] == [f"{tenant}-new"]  # the old one ended
    finally:
        am2.stop()


def test_alerts_that_alertmanager_rejects_are_dead_letters_not_retried(tmp_path, am):
    d = Delivery([AlertmanagerSink(am.url)], str(tmp_path / "spill.ndjson"))
    assert d.deliver([{"labels": {}, "annotations": {}}]) == {"alertmanager": False}
    c = d.counters()
    assert (c["alerts_rejected"], c["delivery_errors"], c["spill_pending"]) == (1, 1, 0)
    with open(tmp_path / "spill.rejected.ndjson") as fh:
        dead = json.loads(fh.readline())
    assert "400" in dead["error"] and "at least one label pair required" in dead["error"]


def test_a_generic_webhook_gets_the_same_alert(tmp_path, hook, am):
    out, tenant = str(tmp_path / "out"), "t-webhook"
    write_window(out, 0, 0.99, tenant=tenant, features=HEALTHY)
    svc = AlertService(out, sinks=[AlertmanagerSink(am.url), WebhookSink(hook.url)], external_url=EXTERNAL)
    svc.poll_once()
    body = hook.wait_for(lambda b: b.get("version") == "aura.alerts/v1"
                         and b["alerts"][0]["labels"]["tenant"] == tenant)
    assert body["alerts"][0]["labels"] == am.alerts(tenant=tenant)[0]["labels"]
    assert svc.counters()["alerts_sent"] == 2  # one alert, two sinks
    svc.stop()


def test_a_latency_from_prediction_file_to_alertmanager_under_two_seconds(tmp_path, am):
    out, tenant = str(tmp_path / "out"), "t-latency"
    svc = service(out, am.url, poll_interval_s=0.05).start()
    try:
        path = write_window(out, 0, 0.9, tenant=tenant, features=HEALTHY)
        wait_until(lambda: am.alerts(tenant=tenant), every_s=0.01)
        visible = time.time()
    finally:
        svc.stop()
    assert visible - os.path.getmtime(path) < 2.0
    entry = svc.latency_log()[0]
    assert entry["file"] == path and entry["accepted"] == {"alertmanager": True}


def test_a_missing_alertmanager_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(alertmanager_server, "BINARY", "/nonexistent/prometheus-alertmanager")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("AURA_ALERTMANAGER_BIN", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y --no-install-recommends"):
        find_binary()


def test_the_alertmanager_binary_is_installed():
    """Fails (does not skip) without it: the Makefile installs prometheus-alertmanager."""
    assert os.access(find_binary(), os.X_OK)
