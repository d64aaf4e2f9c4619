"""The simulated fleet obeys interventions: each action's physical effect, lapses and
cancels, determinism, the unchanged no-action simulation, and the simulator's actuator."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.incidents.actuator import APPLIED, DEAD_LETTER
from pipelines.incidents.interventions import (
    CIRCUIT_BREAKER,
    REROUTE,
    RETRY_BUDGET,
    ROLLBACK,
    SCALE_OUT,
    SHED_LOAD,
    Intervention,
    Link,
)
from pipelines.incidents.sim_actuator import SimulatorActuator
from pipelines.simulation.actions import ACTION_KINDS, Action
from pipelines.simulation.scenario import Scenario, ScenarioConfig

NO_CRASH = (("crash_after", float("inf")),)
Run = tuple[Scenario, list[dict[str, np.ndarray]]]


def quiet(**kw) -> ScenarioConfig:
    """A steady fleet of 60 agents (12 services): its trigger does nothing, no load drift."""
    base = dict(n_agents=60, duration_s=300, seed=5, mechanisms=("retry_storm",), severities=(0.0,),
                load_swing=(0.0, 0.0))
    return ScenarioConfig(**{**base, **kw})


def slowed(**kw) -> ScenarioConfig:
    """The most depended-on leaf service slows down from 40 s, fully from 100 s, until 160 s."""
    return quiet(**{**dict(mechanisms=("timeout_propagation",), severities=(1.0, 0.0), quiet_s=(40.0, 40.0),
                           ramp_s=(60.0, 60.0), trigger_s=(60.0, 60.0)), **kw})


def run(cfg: ScenarioConfig, actions: tuple[Action, ...] = ()) -> Run:
    sc = Scenario(cfg)
    for a in actions:
        sc.act(a)
    return sc, [tel for _, tel in sc.ticks()]


def per_tick(tels: list[dict[str, np.ndarray]], key: str, mask: np.ndarray, how=np.sum) -> np.ndarray:
    return np.array([how(tel[key][mask]) for tel in tels])


def same_ticks(a: list[dict], b: list[dict]) -> bool:
    return all(all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def steady() -> Run:
    return run(quiet())


@pytest.fixture(scope="module")
def slow() -> Run:
    return run(slowed())


# -- no actions: the simulation as it was, bit for bit ------------------------------------
FINGERPRINTS = {  # recorded before the simulator learnt to obey actions
    "seed3_layered": (dict(n_agents=60, duration_s=300, seed=3),
                      "cbca2d23c69fd6e914d7f10eb5bab7f66c2e78da8ae13762e008e1819f3a3b8f"),
    "seed7_layered": (dict(n_agents=60, duration_s=600, seed=7, graph="layered"),
                      "df5794096822461d91f3be9d7cc21b0602b287b76e2bc1a290004bf549a53c39"),
    "seed7_scale_free": (dict(n_agents=60, duration_s=600, seed=7, graph="scale_free"),
                         "465afd8c962d55a3ff934377c50583376b4a4dab82ff2649295e1c1065324ca1"),
    "seed0_scale_free_operator_sheds": (dict(n_agents=60, duration_s=600, seed=0, graph="scale_free"),
                                        "670c17adec1e0eeeebfadf53ca4a0a74e27dd3052c066db9d86c80e7e0f15a37"),
}


def fingerprint(sc: Scenario) -> str:
    """Every tick's telemetry, the labels, and where the scenario's RNG stands at the end."""
    h = hashlib.sha256()
    for t, tel in sc.ticks():
        h.update(np.float64(t).tobytes())
        for k in sorted(tel):
            h.update(k.encode())
            h.update(np.ascontiguousarray(tel[k]).tobytes())
    h.update(json.dumps(sc.labels_document(), sort_keys=True).encode())
    h.update(np.float64(sc.rng.random()).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", sorted(FINGERPRINTS))
def test_no_action_simulation_is_unchanged(case):
    kw, digest = FINGERPRINTS[case]
    assert fingerprint(Scenario(ScenarioConfig(**kw))) == digest


def test_an_action_not_yet_in_force_changes_nothing():
    kw, digest = FINGERPRINTS["seed3_layered"]
    sc = Scenario(ScenarioConfig(**kw))
    sc.act(Action(SHED_LOAD, 400.0, 10.0, 0.5, services=sc.entry_services()))
    assert fingerprint(sc) == digest


# -- each action's effect -----------------------------------------------------------------
def test_shed_load_lowers_entry_arrivals_counts_them_and_lapses(steady):
    base, bt = steady
    entry = base.entry_services()
    sc, tt = run(quiet(), (Action(SHED_LOAD, 100.0, 100.0, 0.5, services=entry),))
    at_entry = np.isin(sc.fleet.service, entry)
    before, after = per_tick(bt, "request_count", at_entry), per_tick(tt, "request_count", at_entry)
    assert same_ticks(bt[:100], tt[:100])
    assert after[100:200].sum() / before[100:200].sum() == pytest.approx(0.5, abs=0.02)
    assert after[210:].sum() / before[210:].sum() == pytest.approx(1.0, abs=0.02)  # lapsed at 200 s
    ledger = sc.ledger
    assert len(ledger["offered"]) == 300
    np.testing.assert_allclose(ledger["shed"][100:200], 0.5 * ledger["offered"][100:200])
    assert not ledger["shed"][:100].any() and not ledger["shed"][200:].any()
    let_in = ledger["offered"] - ledger["shed"]  # what the entry agents received
    assert after.sum() == pytest.approx(let_in.sum(), rel=0.01)
    assert ledger["failed"].sum() < 1e-3 * ledger["offered"].sum()  # a steady fleet fails nothing


def test_cancel_stops_an_action():
    sc = Scenario(quiet())
    shed = Action(SHED_LOAD, 100.0, 100.0, 0.5, services=sc.entry_services(), id="shed-1")
    sc.act(shed)
    for t, _ in sc.ticks():
        if t - sc.cfg.start_epoch_s == 120.0:  # a rollback between ticks
            sc.cancel("shed-1", 150.0)
    shed_per_tick = sc.ledger["shed"]
    assert shed_per_tick[100:150].all() and not shed_per_tick[150:].any()
    with pytest.raises(KeyError):
        sc.cancel("never-scheduled", 10.0)


def calls_per_served_request(sc: Scenario, cfg_actions: tuple[Action, ...], service: int) -> np.ndarray:
    """Per tick, calls (retries included) into ``service`` per request its callers served:
    1 without retries."""
    for a in cfg_actions:
        sc.act(a)
    f = sc.fleet
    into = f.service[f.e_dst] == service
    callers, first = np.unique(f.e_src[into], return_index=True)  # one group per caller
    fan = f.e_fan[into][first]
    out, served = [], f.served.copy()
    for _, tel in sc.ticks():
        out.append(tel["edge_count"][into].sum() / max(float((served[callers] * fan).sum()), 1e-9))
        served = f.served.copy()
    return np.array(out)


def test_retry_budget_removes_retry_amplification(slow):
    cfg = slowed(physics_overrides=NO_CRASH)  # the slow leaf fails by timeouts; nobody crashes
    root = slow[0].episodes[0].root_services[0]
    storm = calls_per_served_request(Scenario(cfg), (), root)
    budget = (Action(RETRY_BUDGET, 60.0, 200.0, 0, services=(root,)),)
    capped = calls_per_served_request(Scenario(cfg), budget, root)
    assert storm[70:160].mean() > 1.15  # callers retry the failing leaf
    assert capped[70:160].max() <= 1.0 + 1e-9  # no retries: one call per request served
    np.testing.assert_array_equal(storm[:60], capped[:60])


@pytest.mark.parametrize("fallback", [1.0, 0.0])
def test_open_breaker_fails_fast_instead_of_timing_out(slow, fallback):
    base, bt = slow
    root = base.episodes[0].root_services[0]
    links = tuple(link for link in base.service_links() if link[1] == root)
    sc, tt = run(slowed(), (Action(CIRCUIT_BREAKER, 50.0, 150.0, fallback, links=links),))
    f = sc.fleet
    callers = np.isin(f.service, [caller for caller, _ in links])
    into = f.service[f.e_dst] == root
    assert not any(tel["edge_count"][into].any() for tel in tt[50:200])  # no calls reach it
    waiting = [per_tick(tels, "latency_p50_ms", callers, np.mean)[60:160].mean() for tels in (bt, tt)]
    assert waiting[1] < 0.3 * waiting[0]  # nobody waits on it
    before, after = base.ledger, sc.ledger
    assert before["failed"][60:160].sum() > 0.5 * before["offered"][60:160].sum()
    if fallback:  # answered degraded, not failed
        assert after["failed"][60:160].sum() < 1e-3 * after["offered"][60:160].sum()
        assert after["degraded"][60:160].sum() > 0.9 * after["offered"][60:160].sum()
    else:  # the calls fail at once
        assert after["failed"][60:160].sum() > 0.9 * after["offered"][60:160].sum()
        assert not after["degraded"].any()
    assert not before["degraded"].any()


def test_scale_out_takes_load_only_after_start_up(steady):
    base, bt = steady
    service, k = 10, 3
    reps = int(base.fleet.replicas[service])
    sc, tt = run(quiet(), (Action(SCALE_OUT, 100.0, 100.0, k, services=(service,)),))
    startup = sc.fleet.physics.startup_s
    assert startup == 20.0
    assert same_ticks(bt[:120], tt[:120]) and not same_ticks(bt[120:121], tt[120:121])
    mine = sc.fleet.service == service
    cpu = per_tick(bt, "cpu", mine, np.mean), per_tick(tt, "cpu", mine, np.mean)
    assert cpu[1][125:200].mean() / cpu[0][125:200].mean() == pytest.approx(reps / (reps + k), abs=0.02)
    latency = per_tick(bt, "latency_p50_ms", mine, np.mean), per_tick(tt, "latency_p50_ms", mine, np.mean)
    assert latency[1][125:200].mean() < 0.8 * latency[0][125:200].mean()
    assert cpu[1][210:].mean() == pytest.approx(cpu[0][210:].mean(), rel=0.02)  # gone at expiry


def test_reroute_moves_load_off_drained_agents(steady):
    base, bt = steady
    members = np.flatnonzero(base.fleet.service == 10)
    drained, peers = members[:1], members[1:]
    sc, tt = run(quiet(), (Action(REROUTE, 100.0, 100.0, 0.0, agents=(int(drained[0]),)),))
    on = slice(100, 200)
    assert not per_tick(tt[on], "request_count", drained).any()
    assert all(tel["up"][drained].all() for tel in tt[on])  # up, reporting, but idle
    peer_load = per_tick(bt[on], "request_count", peers).sum(), per_tick(tt[on], "request_count", peers).sum()
    moved = per_tick(bt[on], "request_count", drained).sum()
    assert peer_load[1] - peer_load[0] == pytest.approx(moved, rel=0.1)
    assert per_tick(tt[200:], "request_count", drained).all()  # lapsed: calls again


def test_reroute_never_routes_into_nothing(steady):
    base, bt = steady
    everyone = tuple(int(i) for i in np.flatnonzero(base.fleet.service == 10))
    _, tt = run(quiet(), (Action(REROUTE, 100.0, 100.0, 0.0, agents=everyone),))
    assert same_ticks(bt, tt)  # a service with every replica drained keeps its calls


# -- determinism ---------------------------------------------------------------------------
SMALL = quiet(n_agents=40, duration_s=120, seed=9)


@lru_cache(maxsize=1)
def small_layout() -> tuple[tuple[int, ...], int, int, list[tuple[int, int]]]:
    sc = Scenario(SMALL)
    return sc.entry_services(), sc.graph.n_services, sc.fleet.n, sc.service_links()


@st.composite
def action_lists(draw) -> list[Action]:
    entry, n_services, n_agents, links = small_layout()

    def subset(xs: list) -> tuple:
        return tuple(draw(st.lists(st.sampled_from(xs), min_size=1, max_size=3, unique=True)))

    targets = {SHED_LOAD: lambda: {"services": subset(list(entry))},
               CIRCUIT_BREAKER: lambda: {"links": subset(links)},
               REROUTE: lambda: {"agents": subset(list(range(n_agents)))}}
    magnitude = {SHED_LOAD: st.floats(0.05, 1.0), RETRY_BUDGET: st.integers(0, 2),
                 SCALE_OUT: st.integers(1, 3), CIRCUIT_BREAKER: st.sampled_from([0.0, 1.0]),
                 REROUTE: st.just(0.0)}
    actions = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(ACTION_KINDS))
        where = targets.get(kind, lambda: {"services": subset(list(range(n_services)))})()
        actions.append(Action(kind, float(draw(st.integers(0, 100))), float(draw(st.integers(1, 80))),
                              float(draw(magnitude[kind])), id=f"act-{i}", **where))
    return actions


def run_small(actions: list[Action], cancel_at: float) -> str:
    sc = Scenario(SMALL)
    for a in actions:
        sc.act(a)
    sc.cancel(actions[0].id, cancel_at)
    return fingerprint(sc) + json.dumps({k: v.tolist() for k, v in sc.ledger.items()})


@settings(max_examples=6, deadline=None)
@given(actions=action_lists(), cancel_at=st.integers(0, 120))
def test_same_seed_same_actions_same_telemetry(actions, cancel_at):
    assert run_small(actions, cancel_at) == run_small(actions, cancel_at)


def test_acting_between_ticks_is_acting_ahead(steady):
    _, ahead = run(quiet(), (Action(SHED_LOAD, 100.0, 50.0, 0.3, services=(0,)),))
    sc, between = Scenario(quiet()), []
    for t, tel in sc.ticks():
        between.append(tel)
        if t - sc.cfg.start_epoch_s == 60.0:
            sc.act(Action(SHED_LOAD, 100.0, 50.0, 0.3, services=(0,)))
    assert same_ticks(ahead, between)


def test_act_rejects_what_the_fleet_does_not_have():
    sc = Scenario(quiet())
    with pytest.raises(ValueError, match="service"):
        sc.act(Action(SCALE_OUT, 0.0, 10.0, 1, services=(99,)))
    with pytest.raises(ValueError, match="links"):
        sc.act(Action(CIRCUIT_BREAKER, 0.0, 10.0, 1.0, links=((11, 0),)))
    with pytest.raises(ValueError, match="magnitude"):
        Action(SHED_LOAD, 0.0, 10.0, 1.5, services=(0,))


def test_max_episodes_one_gives_one_episode():
    kw = dict(n_agents=60, duration_s=900, seed=0, graph="layered")
    unlimited, one = Scenario(ScenarioConfig(**kw)), Scenario(ScenarioConfig(**kw, max_episodes=1))
    for s in (unlimited, one):
        for _ in s.ticks():
            pass
    assert len(unlimited.episodes) >= 2 and len(one.episodes) == 1
    end = int(one.episodes[0].end_s)
    assert one.episodes[0].end_s == unlimited.episodes[0].end_s
    assert not one.unhealthy_counts[end:].any()  # quiet after the episode


# -- the simulator's actuator --------------------------------------------------------------
def intervention(kind: str, targets: tuple[str, ...] = (), magnitude: float = 1.0, **kw) -> Intervention:
    return Intervention("acme", 1_767_225_600_000, 1_767_225_660_000, 0.9, {"view": 1}, kind, targets,
                        magnitude, 60.0, "test", 1_767_225_650.0, **kw)


def test_simulator_actuator_maps_agent_ids_and_dead_letters_the_unknown():
    sc = Scenario(quiet())
    act = SimulatorActuator(sc)
    epoch = sc.cfg.start_epoch_s
    gateways = sc.agents_of(sc.entry_services()[0])
    shed = intervention(SHED_LOAD, tuple(gateways), 0.5)
    deliveries = []
    for t, _ in sc.ticks():
        if t == epoch + 50.0:
            deliveries.append(act.act(shed, t))
        if t == epoch + 80.0:
            deliveries.append(act.act(intervention(ROLLBACK, rollback_of=shed.id), t))
    assert [d.status for d in deliveries] == [APPLIED, APPLIED]
    shed_at = np.flatnonzero(sc.ledger["shed"])
    assert (shed_at[0], shed_at[-1]) == (55, 84)  # 5 s actuation delay on both
    assert act.act(shed, epoch + 90.0).detail == "already applied"  # a replay

    caller, callee = sc.service_links()[0]
    link = Link(sc.agents_of(caller)[0], sc.agents_of(callee)[0])
    breaker = intervention(CIRCUIT_BREAKER, (link.caller,), links=(link,))
    assert act.act(breaker, epoch).status == APPLIED
    assert sc.book.active(5.0)[0].links == ((caller, callee),)
    drained = sc.agents_of(10)[2]
    assert act.act(intervention(REROUTE, (drained,)), epoch).status == APPLIED
    assert sc.book.active(5.0)[1].agents == (sc.agent_index(drained),)

    unknown = act.act(intervention(SCALE_OUT, ("a99999",)), epoch)
    assert unknown.status == DEAD_LETTER and "a99999" in unknown.detail
    backwards = Link(link.callee, link.caller)
    no_calls = act.act(intervention(CIRCUIT_BREAKER, (link.callee,), links=(backwards,)), epoch)
    assert no_calls.status == DEAD_LETTER and "links" in no_calls.detail
    inner = act.act(intervention(SHED_LOAD, (sc.agents_of(10)[0],), 0.5), epoch)
    assert inner.status == DEAD_LETTER and "external load" in inner.detail
    nothing = act.act(intervention(ROLLBACK, rollback_of="f" * 16), epoch)
    assert nothing.status == DEAD_LETTER and "never applied" in nothing.detail
