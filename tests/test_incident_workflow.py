"""The incident workflow on LangGraph: playbook per band and mechanism, approval interrupts,
verify (rollback, escalation), kill-and-resume on SQLite, the CLI, graph rows."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipelines import cli
from pipelines.incidents.actuator import APPLIED, Actuator, Delivery
from pipelines.incidents.graph_rows import incident_rows
from pipelines.incidents.interventions import Intervention
from pipelines.incidents.playbook import Playbook
from pipelines.incidents.workflow import IncidentWorkflow, WindowObservation
from pipelines.windowing import build_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0, W = 1_767_225_600_000, 10_000
CERT = {"view": 3, "block_hash": "ab12", "signers": [0, 1, 2]}
BOOK = Playbook(elevated=0.4, high=0.7)
CALM = {"unhealthy_frac": 0.0, "error_rate_p90": 0.01, "retry_ratio": 1.0, "requests_log": 7.0,
        "reporting_frac": 1.0, "n_agents_log10": 0.7, "latency_p99_log_p50": 3.0,
        "stress_h1_betti_t0.5": 0.0, "stress_h1_total_persistence": 0.0}
MECH = {"retry_storm": {"retry_ratio": 1.5}, "timeout_propagation": {"latency_p99_log_p50": 3.8},
        "failing_dependency": {"error_rate_p90": 0.06}, "load_redistribution": {"reporting_frac": 0.85},
        "unknown": {}}
LOOPS = {"stress_h1_betti_t0.5": 0.4, "stress_h1_total_persistence": 0.3}
UNHEALTHY = {"unhealthy_frac": 0.3, "error_rate_p90": 0.3}
FLEET = {"gw": ("api",), "api": ("db", "cache"), "db": (), "cache": ()}


class Recorder(Actuator):
    """Applies everything and remembers it."""

    name = "recorder"

    def __init__(self) -> None:
        self.issued: list[Intervention] = []

    def act(self, iv: Intervention, now_s: float) -> Delivery:
        self.issued.append(iv)
        return Delivery(iv.id, self.name, APPLIED)


def snap(start_ms: int, tenant: str = "acme", slow: str = "db"):
    """gw -> api -> {db, cache}; ``slow`` is slow and failing."""
    recs = [{"agent_id": a, "event_time": start_ms / 1000 + 1, "latency_p50_ms": 300.0 if a == slow else 10.0,
             "latency_p99_ms": 900.0 if a == slow else 25.0, "error_rate": 0.2 if a == slow else 0.0,
             "request_count": 100, "cpu": 0.5, "memory": 0.5, "queue_depth": 1, "in_flight": 2,
             "calls": [{"dst": d, "count": 50, "errors": 10 if d == slow else 0,
                        "latency_ms": 800.0 if d == slow else 5.0} for d in calls]}
            for a, calls in FLEET.items()]
    return build_snapshot(tenant, start_ms / 1000, start_ms / 1000 + 10, recs)


def obs(i: int, p: float, feats: dict | None = None, cert=CERT, status: str = "ok",
        tenant: str = "acme") -> WindowObservation:
    start = T0 + i * W
    return WindowObservation(tenant, start, start + W, p, cert, status, {**CALM, **(feats or {})},
                             snap(start, tenant), (start + W) / 1000 + 0.5)


def warm(tenant: str = "acme", n: int = 4) -> list[WindowObservation]:
    """Calm low-risk windows: the tenant's mechanism baseline."""
    return [obs(i, 0.05, tenant=tenant) for i in range(n)]


def run(wf: IncidentWorkflow, seq: list[WindowObservation]) -> list[list[str]]:
    """Kinds delivered per window."""
    return [[wf_kind(wf, d.intervention_id) for d in wf.observe(o)] for o in seq]


def wf_kind(wf: IncidentWorkflow, iv_id: str) -> str:
    return next(iv.kind for iv in wf.actuator.issued if iv.id == iv_id)


def workflow(**kw) -> IncidentWorkflow:
    return IncidentWorkflow(kw.pop("db", None), Recorder(), kw.pop("book", BOOK), **kw)


# -- graduated playbook ------------------------------------------------------------------------
def test_elevated_risk_gives_only_a_retry_budget_and_closes_after_calm_windows():
    wf = workflow()
    kinds = run(wf, [*warm(), obs(4, 0.5, MECH["retry_storm"]), *[obs(i, 0.1) for i in (5, 6, 7, 8)]])
    assert kinds == [[], [], [], [], ["retry_budget"], [], [], ["rollback"], []]
    iv = wf.actuator.issued[0]
    assert iv.targets[0] == "db" and len(iv.targets) == 3 and iv.magnitude == 0 and iv.band == "elevated"
    assert iv.certificate == CERT and iv.window_start == T0 + 4 * W
    assert iv.incident_id == f"inc-acme-{T0 + 4 * W}"
    [rec] = wf.incidents()
    assert (rec["status"], rec["outcome"], rec["mechanism"], rec["step"]) == (
        "closed", "averted", "retry_storm", "__end__")
    steps = [e["step"] for e in wf.show(rec["id"])["incident"]["timeline"]]
    assert steps[:5] == ["open", "assess", "localise", "decide", "act"] and steps[-1] == "close"
    assert wf.actuator.issued[-1].rollback_of == iv.id


def test_a_warning_must_persist_open_windows_before_an_incident_opens():
    """open_windows 2: a lone elevated window (a spike) opens nothing; two in a row do, and
    a calibrating window between them does not count as one."""
    wf = workflow(book=dataclasses.replace(BOOK, open_windows=2))
    kinds = run(wf, [*warm(), obs(4, 0.5, MECH["retry_storm"]), obs(5, 0.1),
                     obs(6, 0.5, MECH["retry_storm"]), obs(7, 0.5, status="calibrating"),
                     obs(8, 0.5, MECH["retry_storm"])])
    assert kinds == [[], [], [], [], [], [], [], [], ["retry_budget"]]
    [rec] = wf.incidents()
    assert rec["id"] == f"inc-acme-{T0 + 8 * W}"
    with pytest.raises(ValueError, match="open_windows"):
        dataclasses.replace(BOOK, open_windows=0)


def test_elevated_with_agents_lost_also_reroutes():
    wf = workflow()
    assert run(wf, [*warm(), obs(4, 0.5, MECH["load_redistribution"])])[-1] == ["retry_budget", "reroute"]


@pytest.mark.parametrize("mechanism,feats,expected", [
    ("retry_storm", {}, ["shed_load", "retry_budget"]),
    ("timeout_propagation", {}, ["circuit_breaker"]),
    ("failing_dependency", {}, ["circuit_breaker"]),
    ("load_redistribution", {}, ["scale_out", "reroute"]),
    ("unknown", {}, ["retry_budget", "shed_load"]),
    ("timeout_propagation", LOOPS, ["retry_budget", "circuit_breaker"]),  # H1 loops: retry budget first
])
def test_high_risk_acts_by_mechanism(mechanism, feats, expected):
    wf = workflow(approver=lambda iv: True)
    kinds = run(wf, [*warm(), obs(4, 0.85, {**MECH[mechanism], **feats})])[-1]
    assert kinds == expected
    [rec] = wf.incidents()
    assert rec["mechanism"] == mechanism and rec["step"] == "verify"
    by = {iv.kind: iv for iv in wf.actuator.issued}
    if "shed_load" in by:
        assert by["shed_load"].targets == ("gw",) and by["shed_load"].magnitude == 0.3
    if "circuit_breaker" in by:
        assert [(x.caller, x.callee) for x in by["circuit_breaker"].links] == [("api", "db")]
    if "scale_out" in by:
        assert by["scale_out"].targets == ("db",) and by["scale_out"].magnitude == 2


def test_uncommitted_and_calibrating_verdicts_never_act():
    wf = workflow(approver=lambda iv: True)
    seq = [*warm(), obs(4, 0.95, MECH["retry_storm"], cert=None),
           obs(5, 0.95, MECH["retry_storm"], status="calibrating"),
           obs(6, 0.95, UNHEALTHY, status="out_of_distribution")]
    assert run(wf, seq) == [[]] * 7 and wf.incidents() == []
    # open at elevated; high but uncommitted / held-back windows neither escalate nor count
    seq = [obs(7, 0.5), obs(8, 0.99, UNHEALTHY, cert=None), obs(9, 0.99, UNHEALTHY, status="calibrating")]
    assert run(wf, seq) == [["retry_budget"], [], []]
    timeline = wf.show(wf.incidents()[0]["id"])["incident"]["timeline"]
    assert [e["reason"].split(":")[0] for e in timeline[-2:]] == ["not committed", "held back (calibrating)"]
    assert wf.incidents()[0]["escalation"] == 0


# -- approval -------------------------------------------------------------------------------
@pytest.mark.parametrize("approved", [True, False])
def test_shedding_above_the_impact_threshold_waits_for_approval(approved):
    wf = workflow(approve_above=0.2)
    assert run(wf, [*warm(), obs(4, 0.85, MECH["retry_storm"])])[-1] == []  # interrupted at approve
    [rec] = wf.incidents()
    assert rec["step"] == "approve"
    st = wf.graph.get_state({"configurable": {"thread_id": rec["id"]}})
    assert st.next == ("approve",) and st.interrupts[0].value["approve"][0]["magnitude"] == 0.3
    assert wf.observe(obs(5, 0.85, MECH["retry_storm"])) == []  # noted while waiting
    with pytest.raises(ValueError, match="not waiting"):
        workflow().approve(rec["id"], True, "x")
    kinds = [wf_kind(wf, d.intervention_id) for d in wf.approve(rec["id"], approved, "alice")]
    assert kinds == (["shed_load", "retry_budget"] if approved else ["retry_budget"])
    actions = wf.show(rec["id"])["incident"]["actions"]
    shed = [a["status"] for a in actions if a["kind"] == "shed_load"]
    assert shed == ["active" if approved else "rejected"]
    assert wf.incidents()[0]["step"] == "verify"


def test_cheap_actions_need_no_approval():
    wf = workflow(approve_above=0.2)
    assert run(wf, [*warm(), obs(4, 0.85, MECH["timeout_propagation"])])[-1] == ["circuit_breaker"]


# -- verify --------------------------------------------------------------------------------
def test_an_action_that_did_not_help_is_rolled_back_and_the_incident_escalates():
    wf = workflow()
    kinds = run(wf, [*warm(), obs(4, 0.5, MECH["retry_storm"]), *[obs(i, 0.5) for i in (5, 6, 7)]])
    assert kinds[4:] == [["retry_budget"], [], [], ["rollback"]]
    retry, rollback = wf.actuator.issued
    assert rollback.rollback_of == retry.id and rollback.window_start == T0 + 7 * W
    rec = wf.incidents()[0]
    assert rec["escalation"] == 1 and rec["step"] == "verify"  # nothing new at elevated: watch again
    inc = wf.show(rec["id"])["incident"]
    assert {a["id"]: a["status"] for a in inc["actions"]}[retry.id] == "rolled_back"
    assert "no improvement in 3" in inc["timeline"][-3]["reason"]


def test_a_worse_fleet_escalates_to_the_next_step_and_a_bigger_shed_replaces_the_first():
    wf = workflow(approver=lambda iv: True)
    worse = {**MECH["retry_storm"], **UNHEALTHY}
    kinds = run(wf, [*warm(), obs(4, 0.85, MECH["retry_storm"]), obs(5, 0.9, worse)])
    assert kinds[4:] == [["shed_load", "retry_budget"], ["rollback", "shed_load"]]
    first, _, undo, bigger = wf.actuator.issued
    assert (first.magnitude, bigger.magnitude, undo.rollback_of) == (0.3, 0.5, first.id)
    kinds = run(wf, [obs(i, 0.05) for i in (6, 7, 8)])
    assert kinds == [[], [], ["rollback", "rollback"]]  # close rolls back what is still active
    rec = wf.incidents()[0]
    assert (rec["status"], rec["outcome"], rec["escalation"]) == ("closed", "recovered", 1)


# -- durability, CLI, replay ---------------------------------------------------------------------
CHILD = """
import sys, time
from pipelines.incidents.dry_run import DryRunActuator
from pipelines.incidents.workflow import IncidentWorkflow
from tests.test_incident_workflow import BOOK, MECH, obs, warm
wf = IncidentWorkflow(sys.argv[1], DryRunActuator(sys.argv[2]), BOOK)
for o in [*warm(), obs(4, 0.85, MECH["retry_storm"])]:
    wf.observe(o)
rec = wf.incidents()[0]
print("WAITING", rec["id"], rec["step"], flush=True)
time.sleep(600)
"""

RESUME = """
import json, sys
from pipelines.incidents.dry_run import DryRunActuator
from pipelines.incidents.workflow import IncidentWorkflow
from tests.test_incident_workflow import BOOK, MECH, obs
wf = IncidentWorkflow(sys.argv[1], DryRunActuator(sys.argv[2]), BOOK)
[rec] = wf.incidents()
out = {"resumed_at": rec["step"], "again": len(wf.observe(obs(4, 0.85, MECH["retry_storm"])))}
out["noted"] = len(wf.observe(obs(5, 0.85, MECH["retry_storm"])))
out["approved"] = [d.status for d in wf.approve(rec["id"], True, "oncall")]
out["after"] = [len(wf.observe(obs(i, 0.05))) for i in (6, 7, 8)]
out["final"] = wf.incidents()[0]
print(json.dumps(out))
"""


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, **kw)


def test_killed_while_waiting_for_approval_resumes_in_a_new_process_then_cli_and_replay(tmp_path, capsys):
    db, log = str(tmp_path / "out" / "incidents.sqlite"), str(tmp_path / "actions.ndjson")
    child = _python(CHILD, db, log)
    try:
        line = child.stdout.readline().split()
        assert line[0] == "WAITING" and line[2] == "approve", line
    finally:
        os.kill(child.pid, 9)  # SIGKILL, mid-incident
        child.wait(timeout=30)
    assert child.returncode == -9 and not os.path.exists(log)  # nothing acted before the approval
    second = _python(RESUME, db, log)
    out = json.loads(second.communicate(timeout=120)[0])
    assert second.returncode == 0
    assert (out["resumed_at"], out["again"], out["noted"]) == ("approve", 0, 0)
    assert out["approved"] == ["logged", "logged"] and out["after"] == [0, 0, 2]
    assert (out["final"]["status"], out["final"]["outcome"]) == ("closed", "averted")
    with open(log) as fh:
        kinds = [json.loads(x)["intervention"]["kind"] for x in fh]
    assert kinds == ["shed_load", "retry_budget", "rollback", "rollback"]

    iid = line[1]
    assert cli.main(["incident", "--db", db, "list"]) == 0
    listed = capsys.readouterr().out
    assert iid in listed and "closed" in listed and "averted" in listed
    assert cli.main(["incident", "--db", db, "show", iid]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["incident"]["id"] == iid and "snapshot" not in shown["incident"]
    assert [h["next"] for h in shown["history"]][:4] == ["__start__", "assess", "localise", "decide"]
    assert cli.main(["incident", "--db", db, "replay", iid, "--from", "decide"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    inc = replayed["incident"]
    assert replayed["replayed_from"] == "decide" and (inc["status"], inc["outcome"]) == ("closed", "averted")
    assert [a["kind"] for a in inc["actions"]] == kinds  # the same inputs re-fed: the same actions
    assert sum(e["step"] == "decide" for e in inc["timeline"]) == 1
    assert cli.main(["incident", "--db", db, "replay", iid, "--from", "nowhere"]) == 2


HANG = """
import sys, time
from pipelines.incidents.dry_run import DryRunActuator
from pipelines.incidents.workflow import IncidentWorkflow
from tests.test_incident_workflow import BOOK, MECH, obs, warm
class Hang(DryRunActuator):
    def act(self, iv, now_s):
        print("ACTING", iv.kind, flush=True)
        time.sleep(600)
wf = IncidentWorkflow(sys.argv[1], Hang(sys.argv[2]), BOOK)
for o in [*warm(), obs(4, 0.5, MECH["retry_storm"])]:
    wf.observe(o)
"""

AFTER_HANG = """
import json, sys
from pipelines.incidents.dry_run import DryRunActuator
from pipelines.incidents.workflow import IncidentWorkflow
from tests.test_incident_workflow import BOOK, obs
wf = IncidentWorkflow(sys.argv[1], DryRunActuator(sys.argv[2]), BOOK)
step = wf.incidents()[0]["step"]
delivered = [d.status for d in wf.observe(obs(5, 0.5))]
print(json.dumps({"step": step, "delivered": delivered, "now": wf.incidents()[0]["step"]}))
"""


def test_killed_in_the_middle_of_a_step_reruns_that_step_in_a_new_process(tmp_path):
    db, log = str(tmp_path / "incidents.sqlite"), str(tmp_path / "actions.ndjson")
    child = _python(HANG, db, log)
    try:
        assert child.stdout.readline().split() == ["ACTING", "retry_budget"]
    finally:
        os.kill(child.pid, 9)
        child.wait(timeout=30)
    second = _python(AFTER_HANG, db, log)
    out = json.loads(second.communicate(timeout=120)[0])
    assert out == {"step": "act", "delivered": ["logged"], "now": "verify"}


# -- graph rows --------------------------------------------------------------------------------
def test_graph_rows_of_a_closed_incident():
    wf = workflow(approver=lambda iv: True)
    run(wf, [*warm(), obs(4, 0.85, MECH["timeout_propagation"]), *[obs(i, 0.05) for i in (5, 6, 7)]])
    state = wf.show(wf.incidents()[0]["id"])["incident"]
    (n1, [inc]), (n2, actions) = incident_rows(state)
    assert (n1, n2) == ("incident", "incident_actions")
    assert inc["id"] == state["id"] and inc["props"]["outcome"] == "averted"
    assert inc["props"]["closed"] == T0 + 8 * W and inc["props"]["max_risk"] == 0.85
    breaker, rollback = actions
    assert breaker["props"]["kind"] == "circuit_breaker" and breaker["props"]["status"] == "rolled_back"
    assert [a["key"] for a in breaker["agents"]] == ["acme/db", "acme/api"]
    assert rollback["props"]["rollback_of"] == breaker["id"]


def test_incident_rows_merge_into_a_real_bolt_graph_idempotently(tmp_path):
    from pipelines.graph.server import EmbeddedGraphServer
    from pipelines.graph.sink import GraphSink, GraphSpec

    with EmbeddedGraphServer(str(tmp_path / "graph")) as srv, \
            GraphSink(GraphSpec(srv.uri, *srv.auth)) as sink:
        wf = workflow(approver=lambda iv: True, graph_sink=sink)
        run(wf, [*warm(), obs(4, 0.85, MECH["timeout_propagation"]), *[obs(i, 0.05) for i in (5, 6, 7)]])
        iid = wf.incidents()[0]["id"]
        query = ("MATCH (i:Incident {id: $id})-[:TOOK]->(x:Action) OPTIONAL MATCH (x)-[:TOUCHED]->(a:Agent) "
                 "RETURN i.outcome AS outcome, i.closed AS closed, x.kind AS kind, x.status AS status, "
                 "a.key AS agent ORDER BY kind, agent")

        def rows() -> list[dict]:
            return [r.data() for r in sink.driver.execute_query(query, {"id": iid}, database_="neo4j")[0]]

        first = rows()
        assert first == [
            {"outcome": "averted", "closed": T0 + 8 * W, "kind": k, "status": s, "agent": a}
            for k, s, a in [("circuit_breaker", "rolled_back", "acme/api"), ("circuit_breaker", "rolled_back",
                            "acme/db"), ("rollback", "done", "acme/db")]]
        from pipelines.incidents.graph_rows import write_incident

        assert write_incident(sink, wf.show(iid)["incident"]) and rows() == first  # MERGE: no duplicates


# -- the invariant -----------------------------------------------------------------------------
WINDOW = st.tuples(st.floats(0, 1), st.sampled_from(["cert", None, "cert", "cert"]),
                   st.sampled_from(["ok", "ok", "ok", "calibrating", "out_of_distribution"]),
                   st.sampled_from([*MECH, "unhealthy"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WINDOW, min_size=1, max_size=14), st.booleans())
def test_no_intervention_without_a_committed_observed_window(windows, approve):
    wf = workflow(approver=lambda iv: approve)
    committed = set()
    for i, (p, cert, status, mech) in enumerate(windows):
        o = obs(i, p, UNHEALTHY if mech == "unhealthy" else MECH[mech], cert and CERT, status)
        if o.acts:
            committed.add((o.window_start, o.window_end, o.probability))
        wf.observe(o)
    event("acted" if wf.actuator.issued else "no action")
    for iv in wf.actuator.issued:
        assert iv.certificate == CERT and (iv.window_start, iv.window_end, iv.probability) in committed
