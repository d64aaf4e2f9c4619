"""The alert state machine, its reordering tracker, the mechanism heuristic, incident records
and the service driver over job-shaped output files (and over a real streaming job's)."""

from __future__ import annotations

import json
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.alerts import mechanism as mech
from pipelines.alerts.alertmanager import WebhookSink
from pipelines.alerts.incidents import get_incident, list_incidents
from pipelines.alerts.policy import (
    CASCADE,
    OPEN,
    RESOLVE,
    UPDATE,
    WARNING,
    WITHDRAWN,
    AlertEvent,
    AlertPolicy,
    TenantState,
    fold,
    step,
)
from pipelines.alerts.service import AlertService, build_service
from pipelines.alerts.tracker import TenantTracker
from tests.alerts_fixture import HEALTHY, SICK, T0_MS, WebhookReceiver, scrape_alerts, verdict, write_window

POLICY = AlertPolicy()
DEGRADED = {"unhealthy_frac": 0.07, "error_rate_p90": 0.01}


def run(verdicts, policy=POLICY):
    return fold(policy, TenantState("acme"), verdicts)


def window(i: int) -> int:
    return T0_MS + i * 10_000


# -- the rules, by example ---------------------------------------------------------------------
def test_warning_becomes_cascade_and_resolves_only_after_three_healthy_low_windows():
    seq = ([verdict(i, 0.02, HEALTHY) for i in range(3)]
           + [verdict(3, 0.85, HEALTHY), verdict(4, 0.1, HEALTHY)]  # opens as a warning
           + [verdict(i, 0.01, SICK) for i in range(5, 10)]  # the cascade: risk ~0, fleet sick
           + [verdict(10, 0.05, HEALTHY), verdict(11, 0.05, HEALTHY), verdict(12, 0.05, HEALTHY),
              verdict(13, 0.05, HEALTHY)])
    state, events = run(seq)
    assert [(e.action, e.window_start, e.incident.kind) for e in events] == [
        (OPEN, window(3), WARNING), (UPDATE, window(5), CASCADE), (RESOLVE, window(12), CASCADE)]
    done = events[-1].incident
    assert done.id == f"inc-{window(3)}" and done.status == "resolved"
    assert (done.peak_probability, done.cascade_window, done.unhealthy_windows) == (0.85, window(5), 5)
    assert done.windows == 10 and done.high_windows == 1 and done.resolved_window[0] == window(12)
    assert [t["window_start"] for t in done.timeline] == [window(i) for i in range(3, 13)]
    assert state.open is None


def test_a_high_verdict_in_an_unhealthy_fleet_opens_a_cascade_in_progress():
    _, events = run([verdict(0, 0.9, SICK)])
    assert [(e.action, e.incident.kind) for e in events] == [(OPEN, CASCADE)]


def test_uncommitted_verdicts_change_nothing():
    _, events = run([verdict(0, 0.99, HEALTHY, committed=False), verdict(1, 0.95, SICK, committed=False)])
    assert events == []
    state, events = run([verdict(0, 0.9, HEALTHY)] + [verdict(i, 0.9, HEALTHY, committed=False)
                                                       for i in range(1, 3)]
                        + [verdict(i, 0.1, HEALTHY) for i in range(3, 5)])
    assert [e.action for e in events] == [OPEN] and state.open is not None and state.calm == 2


@pytest.mark.parametrize("blocker", [
    {"p": 0.8, "health": HEALTHY},  # high again
    {"p": 0.1, "health": SICK},
    {"p": 0.1, "health": DEGRADED},  # between the thresholds: not healthy yet
    {"p": 0.1, "health": None},  # no feature row: health unknown
])
def test_any_window_that_is_not_low_and_healthy_restarts_the_count(blocker):
    seq = [verdict(0, 0.9, HEALTHY), verdict(1, 0.1, HEALTHY), verdict(2, 0.1, HEALTHY),
           verdict(3, blocker["p"], blocker["health"]), verdict(4, 0.1, HEALTHY), verdict(5, 0.1, HEALTHY)]
    state, events = run(seq)
    assert RESOLVE not in [e.action for e in events] and state.calm == 2
    _, events = run(seq + [verdict(6, 0.1, HEALTHY)])
    assert events[-1].action == RESOLVE and events[-1].window_start == window(6)


def test_elevated_band_is_not_high_and_the_cut_comes_from_the_risk_bands():
    assert run([verdict(0, 0.69, HEALTHY)])[1] == []
    assert [e.action for e in run([verdict(0, 0.7, HEALTHY)])[1]] == [OPEN]  # p >= 0.7 is high
    lower = AlertPolicy.from_risk_bands("0.2,0.5")
    assert lower.high == 0.5 and lower.band(0.6) == "high" and lower.band(0.3) == "elevated"
    assert [e.action for e in run([verdict(0, 0.55, HEALTHY)], lower)[1]] == [OPEN]


def test_resolve_windows_and_health_thresholds_are_parameters():
    strict = AlertPolicy(resolve_windows=1, healthy_unhealthy_frac=0.08, healthy_latency_log_p50=5.0)
    seq = [verdict(0, 0.9, HEALTHY), verdict(1, 0.1, DEGRADED, latency_p99_log_p50=5.5),
           verdict(2, 0.1, DEGRADED, latency_p99_log_p50=4.5)]
    _, events = run(seq, strict)
    assert [(e.action, e.window_start) for e in events] == [(OPEN, window(0)), (RESOLVE, window(2))]
    with pytest.raises(ValueError, match="resolve_windows"):
        AlertPolicy(resolve_windows=0)
    with pytest.raises(ValueError, match="healthy thresholds"):
        AlertPolicy(healthy_unhealthy_frac=0.2)


def test_verdicts_must_come_in_window_order_for_one_tenant():
    state, _ = run([verdict(5, 0.1, HEALTHY)])
    with pytest.raises(ValueError, match="out of window order"):
        step(POLICY, state, verdict(5, 0.9, HEALTHY))
    with pytest.raises(ValueError, match="tenant"):
        step(POLICY, state, verdict(6, 0.9, HEALTHY, tenant="other"))


@pytest.mark.parametrize("reason", ["calibrating", "out_of_distribution"])
def test_a_held_back_verdict_opens_nothing_however_high_and_an_ok_one_still_does(reason):
    state, events = run([verdict(0, 0.99, HEALTHY, status=reason), verdict(1, 0.95, SICK, status=reason)])
    assert events == [] and state.open is None and state.last_window == window(1)
    assert state.baseline.n == 0  # nor does it teach the mechanism baseline
    _, events = run([verdict(0, 0.99, HEALTHY, status=reason), verdict(1, 0.9, HEALTHY)])
    assert [(e.action, e.window_start) for e in events] == [(OPEN, window(1))]
    tr = TenantTracker(POLICY, "acme")
    assert tr.add(verdict(0, 0.99, HEALTHY, status=reason)) == []
    assert tr.add(verdict(1, 0.97, HEALTHY, status=reason)) == []
    assert [e.action for e in tr.add(verdict(2, 0.9, HEALTHY))] == [OPEN]
    assert tr.held_back == {reason: 2} and tr.counts["verdicts"] == 3


def test_a_held_back_verdict_neither_escalates_nor_resolves_an_open_incident():
    seq = [verdict(0, 0.9, HEALTHY), verdict(1, 0.1, HEALTHY), verdict(2, 0.1, HEALTHY),
           verdict(3, 0.99, SICK, status="out_of_distribution"),  # would escalate and break the count
           verdict(4, 0.1, HEALTHY, status="calibrating"), verdict(5, 0.1, HEALTHY, status="calibrating")]
    state, events = run(seq)
    assert [e.action for e in events] == [OPEN] and state.open.kind == WARNING and state.calm == 2
    assert state.open.windows == 3 and state.open.probability == 0.1  # the last ok verdict's
    assert [t["status"] for t in state.open.timeline] == ["ok"] * 3 + ["out_of_distribution"] + \
        ["calibrating"] * 2  # noted, with its status
    _, events = run(seq + [verdict(6, 0.1, HEALTHY)])  # the third ok calm window resolves it
    assert [(e.action, e.window_start) for e in events] == [(OPEN, window(0)), (RESOLVE, window(6))]


def test_implicated_agents_are_kept_by_their_largest_involvement():
    a = verdict(0, 0.9, HEALTHY)
    b = verdict(1, 0.9, HEALTHY)
    a = a.__class__(**{**a.__dict__, "implicated": (("x", 2.0), ("y", 1.0))})
    b = b.__class__(**{**b.__dict__, "implicated": (("y", 3.0), ("z", 0.5))})
    state, _ = run([a, b])
    assert state.open.implicated == (("y", 3.0), ("x", 2.0), ("z", 0.5))


# -- the mechanism heuristic -------------------------------------------------------------------
BASE = {"retry_ratio": 1.6, "requests_log": 12.2, "reporting_frac": 1.0, "n_agents_log10": 1.785,
        "latency_p99_log_p50": 4.4, "edge_error_share": 0.0, "error_rate_p90": 0.002}


def baseline(n=10):
    b = mech.Baseline()
    for _ in range(n):
        b = b.update(BASE)
    return b


@pytest.mark.parametrize("change,expected", [
    ({"retry_ratio": 1.9}, mech.RETRY_STORM),
    ({"requests_log": 12.2 + 0.15}, mech.RETRY_STORM),  # +16 % load
    ({"reporting_frac": 0.9}, mech.LOAD_REDISTRIBUTION),
    ({"edge_error_share": 0.2}, mech.FAILING_DEPENDENCY),
    ({"latency_p99_log_p50": 5.2}, mech.TIMEOUT_PROPAGATION),
    ({"latency_p99_log_p50": 4.6}, mech.UNKNOWN),
    ({}, mech.UNKNOWN),
])
def test_mechanism_rules_against_the_baseline(change, expected):
    assert mech.classify({**BASE, **change}, baseline()) == expected


def test_mechanism_needs_a_baseline_except_for_errors():
    assert mech.classify({**BASE, "latency_p99_log_p50": 6.0}, baseline(2)) == mech.UNKNOWN
    assert mech.classify({**BASE, "error_rate_p90": 0.3}, mech.Baseline()) == mech.FAILING_DEPENDENCY
    assert mech.classify(None, baseline()) == mech.UNKNOWN
    b = baseline()
    assert b.update({**BASE, "latency_p99_log_p50": 5.4}).get("latency_p99_log_p50") == pytest.approx(4.45)


def test_the_baseline_learns_from_healthy_low_windows_only():
    seq = [verdict(i, 0.02, HEALTHY, **BASE) for i in range(5)]
    seq += [verdict(5, 0.5, HEALTHY, **{**BASE, "latency_p99_log_p50": 9.0}),  # elevated: not learnt
            verdict(6, 0.02, SICK, **{**BASE, "latency_p99_log_p50": 9.0}),  # sick: not learnt
            verdict(7, 0.9, HEALTHY, **{**BASE, "latency_p99_log_p50": 5.3})]
    state, events = run(seq)
    assert state.baseline.n == 5 and state.baseline.get("latency_p99_log_p50") == pytest.approx(4.4)
    assert events[0].incident.mechanism == mech.TIMEOUT_PROPAGATION


# -- properties ----------------------------------------------------------------------------------
HEALTHS = [HEALTHY, HEALTHY, DEGRADED, SICK, None]
window_verdict = st.tuples(st.sampled_from([0.01, 0.2, 0.5, 0.69, 0.7, 0.95]), st.sampled_from(range(5)),
                           st.booleans() | st.just(True))


def verdicts_of(spec) -> list:
    return [verdict(i, p, HEALTHS[h], committed=c) for i, (p, h, c) in enumerate(spec)]


def _low_healthy(policy, v) -> bool:
    return v.committed and v.probability < policy.high and policy.health(v.features) == "healthy"


@settings(max_examples=300, deadline=None)
@given(st.lists(window_verdict, max_size=60), st.integers(1, 4))
def test_properties_of_the_state_machine(spec, n):
    policy = AlertPolicy(resolve_windows=n)
    vs = verdicts_of(spec)
    state, events = run(vs, policy)
    by_window = {v.window_start: v for v in vs}
    committed = [v for v in vs if v.committed]
    is_open = False
    for e in events:
        v = by_window[e.window_start]
        assert v.committed  # only committed verdicts cause events
        if e.action == OPEN:
            assert not is_open and v.probability >= policy.high  # never opens without a high verdict
            assert e.incident.id == f"inc-{v.window_start}"
            is_open = True
        elif e.action == RESOLVE:
            assert is_open
            last = [c for c in committed if c.window_start <= e.window_start][-n:]
            assert len(last) == n and all(_low_healthy(policy, c) for c in last)  # never while unhealthy
            is_open = False
        else:
            assert is_open and e.incident.kind == CASCADE
        if e.action in (UPDATE, RESOLVE) or e.incident.kind == CASCADE:
            # cascade in progress <=> an unhealthy committed window since it opened
            since = [c for c in committed if e.incident.opened_window[0] <= c.window_start <= e.window_start]
            sick = any(policy.health(c.features) == "unhealthy" for c in since)
            assert sick == (e.incident.kind == CASCADE)
    assert is_open == (state.open is not None)
    # enough healthy low windows resolve whatever is open
    tail = [verdict(len(vs) + k, 0.01, HEALTHY) for k in range(n)]
    state2, more = fold(policy, state, tail)
    assert state2.open is None
    assert [e.action for e in more] == ([RESOLVE] if state.open is not None else [])
    # uncommitted verdicts anywhere change nothing
    noisy = [v for v in vs if v.committed]
    assert [(e.action, e.window_start) for e in run(noisy, policy)[1]] == \
        [(e.action, e.window_start) for e in events]


def _shape(events) -> list:
    return [(e.action, e.window_start, e.incident.kind, e.incident.mechanism, e.incident.status,
             e.incident.opened_window, e.incident.resolved_window, e.incident.windows) for e in events]


STATUS = st.sampled_from(["ok", "ok", "calibrating", "out_of_distribution"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(window_verdict, STATUS), max_size=50))
def test_held_back_verdicts_anywhere_give_the_events_of_the_ok_verdicts_alone(spec):
    vs = [verdict(i, p, HEALTHS[h], committed=c, status=status) for i, ((p, h, c), status) in enumerate(spec)]
    state, events = run(vs)
    ok_state, ok_events = run([v for v in vs if v.status == "ok"])
    assert _shape(events) == _shape(ok_events)
    assert (state.open is None) == (ok_state.open is None) and state.calm == ok_state.calm
    assert all(not v.held_back for e in events for v in vs if v.window_start == e.window_start)


def final_incidents(events) -> dict:
    """id -> its last version's status, kind, mechanism, opening and resolving windows."""
    last = {}
    for e in events:
        last[e.incident.id] = e.incident
    return {k: (v.status, v.kind, v.mechanism, v.opened_window, v.resolved_window)
            for k, v in last.items() if v.status != WITHDRAWN}


@settings(max_examples=150, deadline=None)
@given(st.lists(window_verdict, min_size=1, max_size=50), st.randoms(use_true_random=False),
       st.integers(2, 12))
def test_tracker_any_arrival_order_within_the_horizon_gives_the_in_order_incidents(spec, rnd, horizon):
    final = [v.__class__(**{**v.__dict__, "pane_index": 1})
             for v in verdicts_of([(p, h, True) for p, h, _ in spec])]
    # earlier panes of some windows, with other values, arrive too (before or after the final pane)
    stream = [(v.window_start, 1, v) for v in final]
    stream += [(v.window_start, 0, verdict((v.window_start - T0_MS) // 10_000, rnd.choice([0.01, 0.9]),
                                           rnd.choice(HEALTHS))) for v in final if rnd.random() < 0.3]
    keyed = [(w + rnd.uniform(0, (horizon - 1) * 10_000), i, v) for w, i, v in stream]
    keyed.sort(key=lambda x: (x[0], x[1]))  # bounded displacement: less than the horizon
    tracker = TenantTracker(POLICY, "acme", horizon)
    reported = []  # what the service would persist: the events, and the tracker's live versions
    for _, _, v in keyed:
        reported += tracker.add(v)
        reported += [AlertEvent(UPDATE, inc, 0) for inc in tracker.incidents()]
    state, expected = run(final)
    if state.open is not None:
        expected.append(AlertEvent(OPEN, state.open, 0))
    assert final_incidents(reported) == final_incidents(expected)
    assert tracker.open_incident == state.open  # the open one, to the last field
    assert tracker.counts["late_ignored"] == 0


def test_tracker_a_later_pane_withdraws_the_verdict_that_opened_an_alert():
    tr = TenantTracker(POLICY, "acme")
    assert [e.action for e in tr.add(verdict(0, 0.9, HEALTHY))] == [OPEN]
    events = tr.add(verdict(0, 0.1, HEALTHY, pane=1))
    assert [(e.action, e.incident.status) for e in events] == [(RESOLVE, WITHDRAWN)]
    assert tr.add(verdict(0, 0.95, HEALTHY, pane=0)) == [] and tr.counts["stale_pane"] == 1


def test_tracker_a_late_high_window_reopens_and_old_windows_past_the_horizon_are_ignored():
    tr = TenantTracker(POLICY, "acme", horizon=6)
    seq = [verdict(0, 0.9, HEALTHY)] + [verdict(i, 0.1, HEALTHY) for i in (1, 2, 4)]
    events = [e for v in seq for e in tr.add(v)]
    assert [e.action for e in events] == [OPEN, RESOLVE]  # 1, 2, 4: three low healthy committed windows
    events = tr.add(verdict(3, 0.8, HEALTHY))  # window 3 arrives late, high
    assert [e.action for e in events] == [OPEN] and events[0].incident.id == f"inc-{window(0)}"
    for i in range(5, 12):
        tr.add(verdict(i, 0.1, HEALTHY))
    assert tr.add(verdict(2, 0.99, SICK)) == [] and tr.counts["late_ignored"] == 1


# -- the service over job-shaped files ---------------------------------------------------------
def test_service_reads_each_file_once_in_window_order_and_keeps_incident_records(tmp_path):
    out = str(tmp_path / "out")
    svc = AlertService(out, external_url="http://aura.test")
    for i in (1, 0, 2):  # out of order on disk
        write_window(out, i, 0.05, features=HEALTHY)
    write_window(out, 3, 0.9, features={"unhealthy_frac": 0.02}, sick=("c",))
    write_window(out, 0, 0.05, committed=False, pane=1, features=HEALTHY)  # a later pane, no consensus
    events = svc.poll_once()
    assert [(e.action, e.window_start) for e in events] == [(OPEN, window(3))]
    assert svc.poll_once() == []
    c = svc.counters()
    assert (c["files_processed"], c["verdicts"], c["verdicts_uncommitted"]) == (5, 5, 1)
    assert (c["incidents_open"], c["alerts_open"]) == (1, 1)
    write_window(out, 4, 0.1, features=SICK, sick=("b", "c"))
    assert [e.action for e in svc.poll_once()] == [UPDATE]
    rec = get_incident(out, "acme", f"inc-{window(3)}")
    assert rec["status"] == "open" and rec["kind"] == CASCADE
    assert rec["alert"]["labels"]["severity"] == "critical"
    assert {a["agent"] for a in rec["implicated_agents"][:2]} == {"b", "c"}  # the sick part of the graph
    assert [e["action"] for e in rec["events"]] == ["open", "update"]
    assert json.loads(rec["certificate"])["signers"] == [0, 1, 2]
    for i in range(5, 8):
        write_window(out, i, 0.02, features=HEALTHY)
    assert [e.action for e in svc.poll_once()] == [RESOLVE]
    listed = list_incidents(out, "acme")
    assert [(r["id"], r["status"]) for r in listed] == [(f"inc-{window(3)}", "resolved")]
    assert "timeline" not in listed[0] and len(get_incident(out, "acme", listed[0]["id"])["timeline"]) == 5
    assert list_incidents(out, "acme", status="open") == [] and list_incidents(out, "nobody") == []
    assert svc.counters()["incidents_open"] == 0
    log = svc.latency_log()
    assert [x["action"] for x in log] == ["open", "update", "resolve"]
    assert all(x["file_mtime"] <= x["seen_at"] <= x["delivered_at"] for x in log)


def test_service_holds_back_unsure_verdicts_counts_them_and_reads_old_files_as_ok(tmp_path):


    out = str(tmp_path / "out")
    svc = AlertService(out)
    write_window(out, 0, 0.95, features=HEALTHY, status="calibrating")
    write_window(out, 1, 0.97, features=SICK, status="calibrating")
    write_window(out, 2, 0.99, features=SICK, status="out_of_distribution")
    assert svc.poll_once() == [] and svc.open_incidents() == []
    assert svc.held_back() == {"calibrating": 2, "out_of_distribution": 1}
    write_window(out, 3, 0.9, features=HEALTHY, status=None)  # a file from before statuses: ok
    assert [(e.action, e.window_start) for e in svc.poll_once()] == [(OPEN, window(3))]
    assert svc.held_back() == {"calibrating": 2, "out_of_distribution": 1}
    text = scrape_alerts(svc)
    assert 'aura_alerts_held_back_total{reason="calibrating"} 2.0' in text
    assert 'aura_alerts_held_back_total{reason="out_of_distribution"} 1.0' in text
    assert "aura_alerts_verdicts_total 4.0" in text


def test_service_withdraws_an_alert_whose_opening_verdict_a_later_pane_took_back(tmp_path):
    out = str(tmp_path / "out")
    with WebhookReceiver() as hook:
        svc = build_service(out, webhook_url=hook.url, risk_bands="0.3,0.7")
        write_window(out, 0, 0.9, features=HEALTHY)
        svc.poll_once()
        write_window(out, 0, 0.2, pane=1, features=HEALTHY)  # the late pane: risk was not high after all
        assert [(e.action, e.incident.status) for e in svc.poll_once()] == [(RESOLVE, WITHDRAWN)]
        svc.stop()
    assert [b["alerts"][0]["annotations"]["status"] for b in hook.bodies] == ["open", "withdrawn"]
    assert get_incident(out, "acme", f"inc-{window(0)}")["status"] == WITHDRAWN
    assert svc.counters()["alerts_withdraw"] == 1 and svc.counters()["incidents_open"] == 0


def test_service_waits_a_little_for_the_feature_row(tmp_path):
    out = str(tmp_path / "out")
    now = [1_000_000.0]
    svc = AlertService(out, clock=lambda: now[0], feature_wait_s=2.0)
    write_window(out, 0, 0.9, with_features=False)
    now[0] = os.path.getmtime(os.path.join(out, "predictions", "tenant=acme",
                                           f"window={window(0)}-pane=0.parquet")) + 0.5
    assert svc.poll_once() == [] and svc.counters()["files_waiting_features"] == 1
    write_window(out, 0, 0.9, features=SICK, with_prediction=False)
    events = svc.poll_once()
    assert [(e.action, e.incident.kind) for e in events] == [(OPEN, CASCADE)]
    write_window(out, 1, 0.1, with_features=False)  # never gets one: proceeds, health unknown
    now[0] += 10
    svc.poll_once()
    assert svc.trackers["acme"].open_incident.timeline[-1]["health"] == "unknown"


def test_service_dead_letters_an_unreadable_prediction_file(tmp_path):
    out = str(tmp_path / "out")
    write_window(out, 0, 0.9, features=HEALTHY)
    write_window(out, 1, 0.9, features=HEALTHY)
    bad = os.path.join(out, "predictions", "tenant=acme", f"window={window(1)}-pane=0.parquet")
    with open(bad, "wb") as fh:
        fh.write(b"not parquet")
    svc = AlertService(out)
    assert [e.action for e in svc.poll_once()] == [OPEN]
    assert svc.counters()["files_unreadable"] == 1
    with open(os.path.join(out, "alerts", "deadletter.ndjson")) as fh:
        dead = [json.loads(x) for x in fh]
    assert dead[0]["source"] == bad and dead[0]["reason"] == "unreadable_prediction"


def test_incident_readers_reject_path_tricks(tmp_path):
    with pytest.raises(ValueError):
        get_incident(str(tmp_path), "acme", "../../etc/passwd")
    with pytest.raises(ValueError):
        list_incidents(str(tmp_path), "..")
    assert get_incident(str(tmp_path), "acme", "inc-1") is None


def test_a_restarted_service_replays_the_files_without_sending_twice(tmp_path):
    out = str(tmp_path / "out")
    for i, (p, f) in enumerate([(0.9, HEALTHY), (0.1, SICK), (0.1, SICK)]):
        write_window(out, i, p, features=f)
    with WebhookReceiver() as hook:
        svc = AlertService(out, sinks=[WebhookSink(hook.url)])
        svc.poll_once()
        svc.stop()
        assert len(hook.bodies) == 1 and hook.bodies[0]["alerts"][0]["labels"]["severity"] == "critical"
        again = AlertService(out, sinks=[WebhookSink(hook.url)])
        again.poll_once()
        assert len(hook.bodies) == 1  # same incident, same state: nothing new to say
        assert again.counters()["incidents_open"] == 1
        for i in range(3, 6):
            write_window(out, i, 0.02, features=HEALTHY)
        again.poll_once()
        again.stop()
        assert len(hook.bodies) == 2 and hook.bodies[1]["alerts"][0]["annotations"]["status"] == "resolved"
        starts = {a["startsAt"] for b in hook.bodies for a in b["alerts"]}
        assert len(starts) == 1  # the restarted service kept the alert's startsAt


# -- through a real streaming job ----------------------------------------------------------------
def test_service_follows_a_real_streaming_job(tmp_path):
    """The streaming job (consensus on) writes its panes while the service polls them live;
    the risk bands are lowered so that its quiet-fleet verdicts open an alert."""
    from pipelines.beam import job
    from pipelines.config import RunConfig
    from pipelines.inputs import expand_inputs
    from pipelines.simulation.output import simulate_to_dir
    from pipelines.simulation.scenario import Scenario, ScenarioConfig

    sim, out = str(tmp_path / "sim"), str(tmp_path / "out")
    simulate_to_dir([Scenario(ScenarioConfig(n_agents=20, duration_s=90.0, seed=1))], sim, "ndjson", 10.0)
    cfg = RunConfig(input=sim, out=out, graph=False).validate()
    paths = expand_inputs(sim)
    svc = AlertService(out, policy=AlertPolicy.from_risk_bands("0.0001,0.0002"), poll_interval_s=0.05).start()
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("s", job.run_files_streaming(
        paths, cfg.window_spec(), out, 5.0, cfg.guard(), cfg.extractor(), cfg.predictor_spec(), None,
        consensus=cfg.consensus_spec())))
    th.start()
    th.join(120)
    svc.poll_once()
    svc.stop()
    summary = result["s"]
    assert summary.reconciles
    files = sorted(os.listdir(os.path.join(out, "predictions", "tenant=acme")))
    c = svc.counters()
    assert c["files_processed"] == len(files) == c["verdicts"] >= 8
    assert c["verdicts_uncommitted"] == 0  # every verdict carried a certificate
    incidents = list_incidents(out, "acme", timeline=True)
    assert len(incidents) == 1 and incidents[0]["status"] == "open" and incidents[0]["kind"] == WARNING
    rec = incidents[0]
    # the committed model holds its first 6 windows back (calibrating); the first trusted
    # window opened it, and every later one is on it
    assert len(rec["timeline"]) == len(files) - 6
    assert json.loads(rec["certificate"])["height"] >= 1 and rec["implicated_agents"] is not None
    assert rec["mechanism"] in mech.MECHANISMS
    opened = [x for x in svc.latency_log() if x["action"] == "open"][0]
    assert 0 <= opened["delivered_at"] - opened["file_mtime"] < 2.0
