"""The alert service feeding the incident workflow: committed verdicts in job-shaped output
files -> incidents in ``<out>/incidents.sqlite`` and interventions through the actuator, each
window once (across polls and restarts), approvals from ``aura incident approve``."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from pipelines import cli
from pipelines.alerts.service import AlertService, build_service
from pipelines.alerts.workflow_feed import playbook_for, stored_actuator
from pipelines.config import ApiConfig, RunConfig
from pipelines.incidents.store import DEFAULT_DB
from tests.alerts_fixture import CERT, HEALTHY, T0_MS, WebhookReceiver, scrape_alerts, write_window

SICK = {"unhealthy_frac": 0.2, "error_rate_p90": 0.3}
OPENED = f"inc-acme-{T0_MS + 6 * 10_000}"


def rising(out: str, high: bool = False) -> None:
    """Calm windows, a high verdict without consensus and one still calibrating (neither may
    act), then an elevated committed one (a retry budget); ``high``: then high and sick (a
    shed above the approval threshold)."""
    for i in range(4):
        write_window(out, i, 0.05, features=HEALTHY)
    write_window(out, 4, 0.95, committed=False, features=SICK)
    write_window(out, 5, 0.95, status="calibrating", features=SICK)
    write_window(out, 6, 0.5, features=HEALTHY, sick=("c",))
    if high:
        write_window(out, 7, 0.9, features=SICK, sick=("b", "c"))


def service(out: str, model_dir: str, actuator: str | None = None) -> AlertService:
    return build_service(out, risk_bands="0.3,0.7", model_dir=model_dir,
                         actuator=actuator or f"dry-run:{os.path.join(out, 'interventions.ndjson')}")


def issued(out: str) -> list[dict]:
    path = os.path.join(out, "interventions.ndjson")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(x)["intervention"] for x in fh]


def listed(db: str, capsys) -> list[dict]:
    assert cli.main(["incident", "--db", db, "list", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def model_dir(tmp_path) -> str:
    """A model directory without playbook.json: the cuts are the service's risk bands."""
    path = tmp_path / "model"
    path.mkdir()
    return str(path)


def test_committed_warnings_act_once_across_polls_and_restarts(tmp_path, model_dir, capsys):
    out = str(tmp_path / "run")
    db = os.path.join(out, "incidents.sqlite")
    rising(out)
    svc = service(out, model_dir)
    svc.poll_once()
    [rec] = listed(db, capsys)
    assert (rec["id"], rec["status"], rec["step"], rec["actions"]) == (OPENED, "open", "verify", 1)
    [iv] = issued(out)  # not the uncommitted or the calibrating 0.95 before it
    assert (iv["kind"], iv["incident_id"], iv["verdict"]["probability"]) == ("retry_budget", OPENED, 0.5)
    assert iv["verdict"]["certificate"] == json.loads(CERT) and iv["targets"][0] == "c"
    c = svc.counters()
    assert (c["workflow_windows"], c["workflow_skipped"], c["workflow_errors"]) == (7, 0, 0)
    assert svc.interventions() == {("retry_budget", "logged"): 1}

    write_window(out, 6, 0.5, pane=1, features=HEALTHY, sick=("c",))  # a late pane of a fed window
    svc.poll_once()
    svc.poll_once()
    assert len(issued(out)) == 1 and svc.counters()["workflow_skipped"] == 1

    again = service(out, model_dir)  # a restart (the first one never stopped: a crash)
    again.poll_once()
    assert len(issued(out)) == 1 and again.counters()["workflow_windows"] == 0
    assert again.counters()["workflow_skipped"] == 8
    with sqlite3.connect(db) as conn:  # a crash between feeding and marking: the workflow skips what it saw
        conn.execute("DELETE FROM aura_feed")
    third = service(out, model_dir)
    third.poll_once()
    assert len(issued(out)) == 1 and [r["id"] for r in listed(db, capsys)] == [OPENED]
    for i in (7, 8, 9):  # calm again: the restarted service carries the incident on and closes it
        write_window(out, i, 0.02, features=HEALTHY)
    third.poll_once()
    [rec] = listed(db, capsys)
    assert (rec["status"], rec["outcome"]) == ("closed", "averted")
    assert [x["kind"] for x in issued(out)] == ["retry_budget", "rollback"]
    for s in (svc, again, third):
        s.stop()


def test_a_shed_above_approve_above_waits_for_aura_incident_approve(tmp_path, model_dir, capsys):


    out = str(tmp_path / "run")
    db = os.path.join(out, "incidents.sqlite")
    rising(out, high=True)
    svc = service(out, model_dir)
    svc.poll_once()
    [rec] = listed(db, capsys)
    assert (rec["step"], rec["escalation"]) == ("approve", 1)
    assert [x["kind"] for x in issued(out)] == ["retry_budget"]  # the shed waits
    write_window(out, 8, 0.9, features=SICK, sick=("b", "c"))  # noted while waiting
    svc.poll_once()
    assert len(issued(out)) == 1
    # the CLI uses the actuator the service recorded in the DB, from any directory
    assert stored_actuator(db) == f"dry-run:{os.path.abspath(os.path.join(out, 'interventions.ndjson'))}"
    assert cli.main(["incident", "--db", db, "approve", OPENED, "--by", "alice"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["approved"], answer["by"], answer["step"]) == (True, "alice", "verify")
    assert [d["status"] for d in answer["deliveries"]] == ["logged"]
    shed = issued(out)[-1]
    assert (shed["kind"], shed["magnitude"], shed["verdict"]["probability"]) == ("shed_load", 0.5, 0.9)
    assert cli.main(["incident", "--db", db, "approve", OPENED, "--reject"]) == 2  # not waiting any more
    capsys.readouterr()
    write_window(out, 9, 0.9, features=SICK, sick=("b", "c"))
    svc.poll_once()  # the service carries the approved incident on
    assert listed(db, capsys)[0]["step"] == "verify"

    text = scrape_alerts(svc)
    assert 'aura_alerts_interventions_total{kind="retry_budget",status="logged"} 1.0' in text
    assert "aura_alerts_workflow_windows_total 10.0" in text
    svc.stop()


def test_a_webhook_actuator_posts_the_interventions(tmp_path, model_dir):
    out = str(tmp_path / "run")
    rising(out)
    with WebhookReceiver() as hook:
        svc = service(out, model_dir, actuator=f"webhook:{hook.url}")
        svc.poll_once()
        body = hook.wait_for(lambda b: b.get("kind") == "retry_budget")
        svc.stop()
    assert len(hook.bodies) == 1 and body["verdict"]["certificate"] == json.loads(CERT)
    assert body["incident_id"] == OPENED and svc.interventions() == {("retry_budget", "delivered"): 1}
    assert issued(out) == []


def test_actuator_off_feeds_nothing_and_the_configuration_flows_from_the_command_line(tmp_path, model_dir):
    from pipelines.service.alerting import start_alerts

    out = str(tmp_path / "run")
    rising(out, high=True)
    svc = service(out, model_dir, actuator="off")
    svc.poll_once()
    svc.stop()
    assert svc.feed is None and svc.interventions() == {} and "workflow_windows" not in svc.counters()
    assert not os.path.exists(os.path.join(out, "incidents.sqlite")) and issued(out) == []
    assert [i.status for i in svc.open_incidents()] == ["open"]  # the alerts still run

    a = cli.build_parser().parse_args(["api", "--data-dir", str(tmp_path / "d"), "--actuator", "off",
                                       "--approve-above", "0.4"])
    api, run = cli.load_service_config(a)
    assert (api.actuator, api.approve_above) == ("off", 0.4)
    alerts = start_alerts(api, run, lambda m: None)
    alerts.stop()
    assert alerts.service.feed is None
    api, run = ApiConfig(data_dir=str(tmp_path / "e")).validate(), RunConfig(out=str(tmp_path / "e" / "run"),
                                                                             model_dir=model_dir)
    alerts = start_alerts(api, run, lambda m: None)  # the default: dry-run into the run output
    alerts.stop()
    assert alerts.service.feed.wf.approve_above == 0.2
    assert stored_actuator(os.path.join(run.out, "incidents.sqlite")) == \
        f"dry-run:{os.path.abspath(os.path.join(run.out, 'interventions.ndjson'))}"
    assert os.path.join(ApiConfig().data_dir, "run", "incidents.sqlite") == DEFAULT_DB
    for bad in ("webhook", "off:x", "kafka:topic"):
        with pytest.raises(ValueError, match="actuator"):
            ApiConfig(actuator=bad).validate()
    with pytest.raises(ValueError, match="approve_above"):
        ApiConfig(approve_above=1.5).validate()


def test_playbook_cuts_come_from_playbook_json_beside_the_model(model_dir):
    from pipelines.alerts.policy import AlertPolicy

    policy = AlertPolicy.from_risk_bands("0.3,0.7")
    book, source = playbook_for(model_dir, policy)
    assert (book.elevated, book.high) == (0.3, 0.7) and "risk bands" in source
    with open(os.path.join(model_dir, "playbook.json"), "w") as fh:
        json.dump({"elevated": 0.45, "high": 0.8, "fitted": "test"}, fh)
    book, source = playbook_for(model_dir, policy)
    assert (book.elevated, book.high) == (0.45, 0.8) and "playbook.json" in source
