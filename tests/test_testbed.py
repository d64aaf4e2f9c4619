"""The testbed: real agent processes on loopback exporting OTLP/HTTP to a real receiver
(tests/otlp_receiver.py), a quiet run and a triggered run, and the pure parts (wiring,
triggers, onsets, labels) by their invariants."""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.backtest.labels import check_labels, load_labels
from pipelines.testbed import cli as testbed_cli
from pipelines.testbed.fleet import Fleet, pid_running
from pipelines.testbed.onset import bad_seconds, breaks, episodes, labels_document
from pipelines.testbed.spec import (
    TOPOLOGIES,
    AgentConfig,
    FleetSpec,
    ProcessSpec,
    Ramp,
    RetryPolicy,
    ServiceTime,
    SpecError,
    Trigger,
    wire,
)
from tests.otlp_receiver import OTLPReceiver

# ---------------------------------------------------------------- wiring and specs


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(TOPOLOGIES), st.integers(3, 14), st.integers(0, 10_000), st.integers(1, 3))
def test_wiring_is_a_dag_reaching_every_agent_from_the_entries(topology, n, seed, fanout):
    names = [f"agent-{i}" for i in range(n)]
    calls, entries = wire(topology, names, seed, fanout)
    spec = FleetSpec.build(n, topology, seed=seed, fanout=fanout)  # validates: acyclic, known callees
    assert [c for a in spec.agents for c in a.calls] == [c for a in names for c in calls[a]]
    callees = {c for cs in calls.values() for c in cs}
    assert not set(entries) & callees, "an entry agent is called by another agent"
    seen, todo = set(entries), list(entries)
    while todo:
        for c in calls[todo.pop()]:
            if c not in seen:
                seen.add(c)
                todo.append(c)
    assert seen == set(names)
    for a, cs in calls.items():
        assert len(set(cs)) == len(cs) and a not in cs


def test_named_topologies():
    names = [f"a{i}" for i in range(5)]
    assert wire("chain", names)[0] == {"a0": ["a1"], "a1": ["a2"], "a2": ["a3"], "a3": ["a4"], "a4": []}
    assert wire("fan_out", names) == ({"a0": ["a1", "a2", "a3", "a4"], "a1": [], "a2": [], "a3": [],
                                       "a4": []}, ["a0"])
    assert wire("fan_in", names)[1] == ["a0", "a1", "a2", "a3"]
    calls, entries = wire("diamond", names)
    assert entries == ["a0"] and calls["a0"] == ["a1", "a2", "a3"]
    assert all(calls[x] == ["a4"] for x in ("a1", "a2", "a3"))
    with pytest.raises(SpecError, match="topology"):
        wire("ring", names)
    with pytest.raises(SpecError, match="at least 3"):
        wire("diamond", names[:2])


def test_spec_round_trips_through_json_and_rejects_bad_fleets():
    spec = FleetSpec.build(6, "layered", replicas=2, retry=RetryPolicy(max_attempts=4),
                           service_time=ServiceTime("exponential", 0.02), tenant="t-1", rate=12.5)
    again = FleetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    d = spec.to_dict()
    d["agents"][-1]["calls"] = [d["agents"][0]["name"]]  # closes a cycle
    with pytest.raises(SpecError, match="cycle"):
        FleetSpec.from_dict(d)
    with pytest.raises(SpecError, match="unknown fields"):
        FleetSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(SpecError, match="tenant"):
        FleetSpec.build(3, "chain", tenant="no spaces")
    with pytest.raises(SpecError, match="calls"):
        FleetSpec.from_dict({**spec.to_dict(), "agents": [{"name": "x", "calls": ["y"]}], "entries": ["x"]})


def test_trigger_parsing_and_validation():
    spec = FleetSpec.build(4, "chain", replicas=2)
    t = Trigger.parse("slow@20:agent=agent-3,factor=20,ramp=5,for=10")
    assert (t.kind, t.at_s, t.agent, t.factor, t.ramp_s, t.for_s) == ("slow", 20, "agent-3", 20, 5, 10)
    assert t.mechanism == "timeout_propagation"
    assert Trigger.parse("surge@3.5:factor=3").mechanism == "retry_storm"
    assert Trigger.parse("kill@1:agent=agent-2,count=2").count == 2
    for t in ("slow@20:agent=agent-3,factor=2", "surge@0:factor=2", "kill@5:agent=agent-1",
              "fail@5:agent=agent-0,p=1"):
        Trigger.parse(t).validate(spec, 30)
    for bad, match in (("slow20", "KIND@SECONDS"), ("slow@1:speed=3", "bad argument"),
                       ("slow@1:factor=x", "not a float")):
        with pytest.raises(SpecError, match=match):
            Trigger.parse(bad)
    for bad, match in (("melt@1:agent=agent-0", "kind"), ("slow@40:agent=agent-0", "inside the run"),
                       ("slow@1", "agent=NAME"), ("slow@1:agent=nobody", "no agent"),
                       ("fail@1:agent=agent-0", "0 < p"), ("kill@1:agent=agent-0,count=3", "count")):
        with pytest.raises(SpecError, match=match):
            Trigger.parse(bad).validate(spec, 30)


def test_latency_model_and_ramps():
    rng = random.Random(7)
    for kind in ("lognormal", "exponential", "constant"):
        st_ = ServiceTime(kind, 0.04, 0.6)
        mean = sum(st_.sample(rng) for _ in range(40_000)) / 40_000
        assert mean == pytest.approx(0.04, rel=0.03), kind
    r = Ramp()
    r.retarget(11.0, 10.0, now=100.0)
    assert [r.value(t) for t in (99.0, 100.0, 105.0, 110.0, 200.0)] == [1.0, 1.0, 6.0, 11.0, 11.0]
    r.retarget(1.0, 0.0, now=105.0)
    assert r.value(105.0) == 1.0
    p = RetryPolicy(backoff_s=0.1, multiplier=2.0, jitter=0.5)
    for attempt, base in ((1, 0.1), (2, 0.2), (3, 0.4)):
        assert all(0.5 * base <= p.delay(attempt, rng) <= 1.5 * base for _ in range(200))


# ---------------------------------------------------------------- onsets and labels


fractions_st = st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(fractions_st, st.lists(st.floats(0.0, 79.0), max_size=4), st.floats(0.05, 0.95), st.integers(1, 5))
def test_onset_is_the_first_sustained_break_after_each_trigger(fracs, trig_s, threshold, sustain):
    n = len(fracs)
    trig_s = sorted(t for t in trig_s if t < n)
    bad = bad_seconds(fracs, threshold)
    eps = episodes(fracs, trig_s, threshold, sustain)
    for k, (t, ep) in enumerate(zip(trig_s, eps)):
        lo = math.ceil(t)
        hi = math.ceil(trig_s[k + 1]) if k + 1 < len(trig_s) else n
        starts = [a for a, _ in breaks(fracs, threshold, sustain) if lo <= a < min(hi, n)]
        if ep["onset"] is None:
            assert not starts and ep["end"] is None
            continue
        o = ep["onset"]
        assert o == starts[0] and o >= t
        assert all(bad[o:o + sustain]) and o + sustain <= n and (o == 0 or not bad[o - 1])
        assert o < ep["end"] <= n and bad[ep["end"] - 1] and (ep["end"] == n or not bad[ep["end"]])
    triggers = [Trigger("slow", t, agent="x", factor=5) for t in trig_s]
    doc = labels_document(fracs, triggers, tenant="acme", start=1_800_000_000.0, duration_s=float(n),
                          threshold=threshold, sustain=sustain)
    check_labels({"schema": "aura.labels/v1", "scenarios": [doc]})
    assert len(doc["cascades"]) + len(doc["fizzles"]) == len(triggers)


def test_onset_examples():
    f = [0.0, 0.1, 0.9, 0.9, 0.0, 0.8, 0.9, 1.0, 0.7, None, 0.2, 0.9]
    assert bad_seconds(f, 0.5) == [False, False, True, True, False, True, True, True, True, True, False,
                                   True]
    assert bad_seconds([None, 0.9], 0.5) == [False, True]
    assert breaks(f, 0.5, 3) == [(5, 9)]  # the silent second 9 keeps the break going
    assert breaks(f, 0.5, 2) == [(2, 3), (5, 9)]
    # the cascade ends with the episode's last bad second (a relapse at 11 still counts)
    assert episodes(f, [1.0], 0.5, 3) == [{"onset": 5, "end": 12, "peak_fail_frac": 1.0}]
    assert episodes(f[:11], [1.0], 0.5, 3) == [{"onset": 5, "end": 10, "peak_fail_frac": 1.0}]
    # a trigger landing in a break that began before it: a fizzle, flagged
    assert episodes(f, [1.0, 6.0], 0.5, 3)[1] == {"onset": None, "end": None, "peak_fail_frac": 1.0,
                                                 "during_break": True}
    doc = labels_document(f, [], tenant="t", start=100.0, duration_s=12.0, threshold=0.5, sustain=3)
    assert doc["cascades"] == [] and doc["breaks_without_trigger"] == [{"onset": 105.0, "end": 110.0}]


# ---------------------------------------------------------------- CLI without a fleet


def _cli_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    testbed_cli.add_testbed_args(p)
    return p.parse_args(list(argv))


def test_cli_builds_the_spec_and_refuses_bad_triggers(tmp_path, capsys):
    spec = testbed_cli.spec_from_args(_cli_args("--agents", "5", "--topology", "chain", "--rate", "7",
                                                "--tenant", "t9", "--replicas", "2", "--timeout", "0.4",
                                                "--max-attempts", "2"))
    assert (len(spec.agents), spec.rate, spec.tenant, spec.entries) == (5, 7.0, "t9", ["agent-0"])
    assert all(a.replicas == 2 and a.timeout_s == 0.4 and a.retry.max_attempts == 2 for a in spec.agents)
    f = tmp_path / "fleet.json"
    f.write_text(json.dumps(spec.to_dict()))
    assert testbed_cli.spec_from_args(_cli_args("--spec", str(f), "--rate", "3")).rate == 3.0
    rc = testbed_cli.testbed_main(_cli_args("--agents", "3", "--topology", "chain", "--duration", "10",
                                            "--trigger", "slow@99:agent=agent-1",
                                            "--out", str(tmp_path / "o")))
    assert rc == 2 and "inside the run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- one agent on its own


def test_agent_process_on_its_own(tmp_path):
    """``python -m pipelines.testbed.agent --spec JSON``: a degrading agent whose callee is
    down (connection refused, retried), runtime control, injected errors, and a SIGTERM
    that flushes every span and exits 0."""
    sock, dead = socket.socket(), socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port, dead_port = sock.getsockname()[1], dead.getsockname()[1]
    agent = AgentConfig("solo", calls=["ghost"], workers=2, queue=2, on_failure="degrade",
                        retry=RetryPolicy(max_attempts=2, backoff_s=0.01),
                        service_time=ServiceTime("constant", 0.01))
    stats_path = tmp_path / "solo.stats.json"
    with OTLPReceiver() as rx:
        spec = ProcessSpec(agent=agent, replica=0, tenant=TENANT, otlp_endpoint=rx.endpoint, port=port,
                           downstream={"ghost": [f"http://127.0.0.1:{dead_port}"]}, fd=sock.fileno(),
                           stats_path=str(stats_path))
        cmd = [sys.executable, "-m", "pipelines.testbed.agent", "--spec", json.dumps(asdict(spec))]
        proc = subprocess.Popen(cmd, pass_fds=[sock.fileno()])
        sock.close()
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=20.0) as c:  # the listening socket accepts before the app is up
                r = c.post(f"{url}/invoke", json={})
                assert r.status_code == 200 and r.json()["degraded"] and r.json()["failed_calls"] == ["ghost"]
                assert c.post(f"{url}/control", json={"slow_factor": -1}).status_code == 400
                assert c.post(f"{url}/control", json={"speed": 2}).status_code == 400
                assert c.post(f"{url}/control", json={"error_prob": 1.0}).json()["error_prob"] == 1.0
                r = c.post(f"{url}/invoke", json={})
                assert r.status_code == 500 and r.json()["error"] == "injected"
                assert c.get(f"{url}/healthz").json() == {"ok": True, "agent": "solo", "replica": 0}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            dead.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stats = json.loads(stats_path.read_text())
        spans = rx.spans()
    assert stats["received"] == 2 and stats["degraded"] == 1 and stats["injected"] == 1
    # two server spans and the two client attempts of the first request (the warm-up makes none)
    assert stats["spans_ended"] == stats["spans_exported"] == len(spans) == 4
    clients = sorted((s for s in spans if s.kind == "client"), key=lambda s: s.start_ns)
    assert [s.attributes["error.type"] for s in clients] == ["connection_error", "connection_error"]
    assert [s.attributes.get("http.request.resend_count") for s in clients] == [None, 1]
    assert all(s.attributes["server.port"] == dead_port and s.attributes["service.peer.name"] == "ghost"
               for s in clients)
    servers = sorted((s for s in spans if s.kind == "server"), key=lambda s: s.start_ns)
    assert [s.error for s in servers] == [False, True] and servers[0].attributes["aura.degraded"] is True
    assert servers[1].attributes["error.type"] == "injected"
    assert all(s.instance == "solo/0" and s.tenant == TENANT for s in spans)


# ---------------------------------------------------------------- a real fleet

TENANT = "tb-test"


@pytest.fixture(scope="module")
def fleet_runs(tmp_path_factory):
    """One fleet (diamond: agent-0 -> agent-1, agent-2 -> agent-3, agent-3 with two
    replicas) exporting to a real OTLP receiver: a quiet run, then a run where one
    agent-3 replica is SIGKILLed and the survivor then slows far past the client timeout."""
    out = tmp_path_factory.mktemp("testbed")
    with OTLPReceiver() as rx:
        spec = FleetSpec.build(4, "diamond", workers=4, queue=8, timeout_s=0.8,
                               retry=RetryPolicy(max_attempts=3, backoff_s=0.05),
                               service_time=ServiceTime("lognormal", 0.02, 0.5), rate=6.0,
                               entry_timeout_s=2.5, tenant=TENANT, seed=3, otlp_endpoint=rx.endpoint)
        spec.agent("agent-3").replicas = 2
        fleet = Fleet(spec, workdir=str(out / "processes"))
        try:
            fleet.start()
            quiet = fleet.run(8, [], str(out / "quiet"))
            triggers = [Trigger.parse("kill@2:agent=agent-3,count=1"),
                        Trigger.parse("slow@6:agent=agent-3,factor=60,ramp=1")]
            loud = fleet.run(15, triggers, str(out / "loud"))
        finally:
            final = fleet.stop()
        rx.wait_quiet(0.5, 5.0)
        yield {"spec": spec, "fleet": fleet, "quiet": quiet, "loud": loud, "final": final,
               "spans": rx.spans(), "out": out}
    fleet.close()


def test_quiet_run_records_no_onset(fleet_runs):
    q = fleet_runs["quiet"]
    assert q["cascades"] == [] and q["breaks_without_trigger"] == []
    assert q["requests"]["sent"] >= 25 and q["entry_fail_frac"] < 0.1, q["requests"]
    docs = load_labels(str(fleet_runs["out"] / "quiet" / "labels.json"))
    assert docs[0]["tenant"] == TENANT and docs[0]["cascades"] == [] and docs[0]["fizzles"] == []
    recs = [json.loads(x) for x in (fleet_runs["out"] / "quiet" / "client.ndjson").read_text().splitlines()]
    assert len(recs) == q["recorded_s"] >= 8 and [r["t"] for r in recs] == list(range(len(recs)))
    # every request sent has exactly one outcome
    assert sum(r["sent"] for r in recs) == q["requests"]["sent"] == sum(
        r["ok"] + r["failed"] + r["timed_out"] + r["shed"] for r in recs)


def test_trigger_breaks_the_fleet_after_the_trigger(fleet_runs):
    loud = fleet_runs["loud"]
    docs = load_labels(str(fleet_runs["out"] / "loud" / "labels.json"))  # passes the labels check
    doc = docs[0]
    start = doc["start"]
    slow = [c for c in doc["cascades"] if c["mechanism"] == "timeout_propagation"]
    assert len(slow) == 1, (doc, loud["seconds"])
    c = slow[0]
    assert c["trigger_time"] == pytest.approx(start + 6, abs=0.01)
    assert c["trigger_time"] <= c["onset"] <= c["trigger_time"] + 8 and c["onset"] < c["end"] <= doc["end"]
    # the kill of one of two replicas is absorbed by the other: no break before the slowdown
    assert [f["mechanism"] for f in doc["fizzles"]] == ["load_redistribution"]
    before = [s for s in loud["seconds"] if s["t"] < 6]
    assert sum(s["sent"] for s in loud["seconds"]) == sum(s["ok"] + s["failed"] + s["timed_out"] + s["shed"]
                                                         for s in loud["seconds"])
    after = [s for s in loud["seconds"] if s["t"] >= c["onset"] - start]
    def frac(ss):
        return sum(s["failed"] + s["timed_out"] + s["shed"] for s in ss) / sum(s["sent"] for s in ss)

    assert frac(before) < 0.2 and frac(after) > 0.5
    applied = {a["kind"]: a for a in loud["triggers_applied"]}
    assert len(applied["kill"]["killed_pids"]) == 1 and applied["slow"]["replicas_answered"] == 1
    wiring = json.loads((fleet_runs["out"] / "loud" / "wiring.json").read_text())
    assert wiring["edges"] == [["agent-0", "agent-1"], ["agent-0", "agent-2"], ["agent-1", "agent-3"],
                               ["agent-2", "agent-3"]]


def _by_id(spans):
    return {s.span_id: s for s in spans}


def test_spans_reach_the_receiver_and_reconcile(fleet_runs):
    spans, final, spec = fleet_runs["spans"], fleet_runs["final"], fleet_runs["spec"]
    assert {s.service for s in spans} == {a.name for a in spec.agents}
    assert {s.tenant for s in spans} == {TENANT}
    killed = {f"agent-3/{r.index}" for r in fleet_runs["fleet"].replicas["agent-3"] if r.killed}
    assert len(killed) == 1 and len(final) == 4  # the killed replica wrote no final stats
    got = defaultdict(int)
    for s in spans:
        got[s.instance] += 1
    for key, st_ in final.items():
        assert st_["spans_export_failed"] == 0 and st_["spans_exported"] == st_["spans_ended"], key
    # every span a surviving replica ended (warm-up included) was received, no more, no less
    for key in final:
        assert got[key] == final[key]["spans_exported"] > 0, key
    servers = [s for s in spans if s.kind == "server"]
    assert all(s.name == f"invoke_agent {s.service}" and s.attributes["gen_ai.agent.name"] == s.service
               and s.attributes["gen_ai.operation.name"] == "invoke_agent" for s in servers)
    failed = [s for s in servers if s.error]
    assert failed and all(s.attributes.get("error.type") for s in failed)


def test_cross_service_parents_match_the_wiring_exactly(fleet_runs):
    spans, spec = fleet_runs["spans"], fleet_runs["spec"]
    by_id = _by_id(spans)
    ports = {a: [r.port for r in rs] for a, rs in fleet_runs["fleet"].replicas.items()}
    edges, linked = set(), 0
    for s in spans:
        parent = by_id.get(s.parent_span_id)
        if s.kind != "server" or parent is None:
            continue
        linked += 1
        assert parent.kind == "client" and parent.trace_id == s.trace_id
        assert parent.attributes["service.peer.name"] == s.service
        assert parent.attributes["server.port"] in ports[s.service]
        edges.add((parent.service, s.service))
    wiring = json.loads((fleet_runs["out"] / "loud" / "wiring.json").read_text())
    assert edges == {tuple(e) for e in wiring["edges"]} == set(spec.edges())
    # and every client span names a callee its agent is wired to, under its own server span
    for s in spans:
        if s.kind == "client":
            assert [s.service, s.attributes["service.peer.name"]] in wiring["edges"]
            assert by_id[s.parent_span_id].kind == "server" and by_id[s.parent_span_id].service == s.service
    entry_roots = [s for s in spans if s.kind == "server" and not s.parent_span_id]
    assert {s.service for s in entry_roots} == set(spec.entries)
    assert linked > 100


def test_retries_are_extra_client_spans(fleet_runs):
    spans = fleet_runs["spans"]
    groups = defaultdict(list)
    for s in spans:
        if s.kind == "client":
            groups[s.parent_span_id, s.attributes["service.peer.name"]].append(s)
    retried = 0
    kinds = set()
    for attempts in groups.values():
        attempts.sort(key=lambda s: s.start_ns)
        resends = [s.attributes.get("http.request.resend_count", 0) for s in attempts]
        assert resends == list(range(len(attempts)))
        assert len(attempts) <= 3
        assert all(s.error for s in attempts[:-1])  # only a failed attempt is retried
        if len(attempts) > 1:
            retried += 1
            kinds.update(s.attributes["error.type"] for s in attempts[:-1])
    assert retried > 0 and {"timeout", "connection_error"} <= kinds
    # a dead replica's connection error was retried on the other replica, which answered
    assert any(a[0].attributes["error.type"] == "connection_error" and not a[-1].error
               and a[-1].attributes["server.port"] != a[0].attributes["server.port"]
               for a in groups.values() if len(a) > 1)


def test_every_process_is_gone(fleet_runs):
    fleet = fleet_runs["fleet"]
    pids = fleet.pids()
    assert len(pids) == 1 + 5  # the zygote and five replicas
    assert not [p for p in pids if pid_running(p)]


def test_cli_table_reports_the_run(fleet_runs):
    fleet = fleet_runs["fleet"]
    names = [a.name for a in fleet.spec.agents]
    text = testbed_cli.table(fleet_runs["loud"], fleet.agent_totals(fleet_runs["final"]), names)
    assert "cascade (timeout_propagation)" in text and "fizzle (load_redistribution)" in text
    assert text.count("agent-") == 4 and "cores" in text
    assert "no cascade" in testbed_cli.table(fleet_runs["quiet"], {}, ["agent-0"])


def test_outputs_are_written(fleet_runs):
    d = Path(fleet_runs["out"]) / "loud"
    assert {p.name for p in d.iterdir()} >= {"labels.json", "wiring.json", "client.ndjson", "fleet.json",
                                             "summary.json"}
    fleet_json = json.loads((d / "fleet.json").read_text())
    assert [t["kind"] for t in fleet_json["triggers"]] == ["kill", "slow"]
    FleetSpec.from_dict({k: v for k, v in fleet_json.items() if k not in ("triggers", "duration_s")})
