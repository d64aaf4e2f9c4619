"""The simulator's physics, labels and determinism."""

from __future__ import annotations

import hashlib
import os

import networkx as nx
import numpy as np
import pytest

from pipelines.simulation.fleet import unhealthy
from pipelines.simulation.graphs import build_graph, topological_order
from pipelines.simulation.output import simulate_to_dir, tick_records, tick_table
from pipelines.simulation.scenario import Scenario, ScenarioConfig
from pipelines.telemetry import parse_file


def run(cfg: ScenarioConfig) -> tuple[Scenario, list[dict]]:
    sc = Scenario(cfg)
    ticks = [tel for _, tel in sc.ticks()]
    return sc, ticks


def one_episode(mechanism: str, severity: float, **kw) -> ScenarioConfig:
    # later triggers on the timeline have severity 0: no surge, no delay, no replica killed
    base = dict(n_agents=200, duration_s=300, seed=1, mechanisms=(mechanism,), severities=(severity, 0.0),
                quiet_s=(40.0, 40.0), ramp_s=(60.0, 60.0), trigger_s=(30.0, 30.0),
                load_swing=(0.0, 0.0))  # no background load drift: the trigger alone
    base.update(kw)
    return ScenarioConfig(**base)


@pytest.mark.parametrize("family", ["layered", "scale_free"])
def test_graphs_are_dags_with_steady_loads(family):
    g = build_graph(family, 60, np.random.default_rng(3))
    dg = nx.DiGraph(list(zip(*g.fanout.nonzero())))
    assert nx.is_directed_acyclic_graph(dg)
    assert len(topological_order(g.fanout)) == 60
    lam = g.steady_load()
    np.testing.assert_allclose(lam, g.external + g.fanout.T @ lam, rtol=1e-9)
    assert (lam > 0).all()


def test_same_seed_same_telemetry_and_labels(tmp_path):
    cfg = ScenarioConfig(n_agents=60, duration_s=120, seed=11)
    digests = []
    for run_dir in ("a", "b"):
        doc = simulate_to_dir(Scenario(cfg), str(tmp_path / run_dir))
        h = hashlib.sha256()
        for name in sorted(os.listdir(tmp_path / run_dir)):
            h.update((tmp_path / run_dir / name).read_bytes())
        digests.append((h.hexdigest(), str(doc)))
    assert digests[0] == digests[1]
    other = simulate_to_dir(Scenario(ScenarioConfig(n_agents=60, duration_s=120, seed=12)),
                            str(tmp_path / "c"))
    assert str(other) != digests[0][1] or sorted(os.listdir(tmp_path / "c"))


def test_steady_fleet_stays_healthy_without_a_trigger():
    sc, ticks = run(one_episode("retry_storm", 0.0))  # magnitude 1.0: no surge at all
    counts = [int(unhealthy(t["error_rate"], t["latency_p99_ms"], 1.0).sum()) for t in ticks]
    assert max(counts) == 0


def test_retries_off_recovers_and_high_retry_amplification_stays_failed():
    """Same graph, same surge: without retries the fleet drains its queues once the trigger
    ends; with 4 retries per call the retry load alone keeps it failed (metastable). No
    crashes and no operator here: the retry physics alone."""
    outcome = {}
    for retries in (0, 4):
        physics = (("max_retries", retries), ("crash_after", float("inf")))
        sc, ticks = run(one_episode("retry_storm", 0.9, operator_after_s=float("inf"),
                                    physics_overrides=physics))
        ep = sc.episodes[0]
        sick = np.array([int(unhealthy(t["error_rate"], t["latency_p99_ms"], 1.0).sum()) for t in ticks])
        during = sick[int(ep.trigger_s):int(ep.trigger_end_s)].max()
        tail = sick[int(ep.trigger_end_s) + 60:]
        outcome[retries] = (during, tail.max(), tail.min(), tail.mean())
    during, tail_max, _, _ = outcome[0]
    assert during > 0 and tail_max == 0, outcome
    during, _, tail_min, tail_mean = outcome[4]
    # never recovers, and on average still above the cascade threshold 3+ minutes later
    assert during > 0 and tail_min > 0 and tail_mean >= 0.1 * 200, outcome


def test_load_redistribution_failed_fraction_grows_as_alpha_shrinks():
    """Motter & Lai: capacity = (1 + alpha) x steady load; killing the same replicas on
    the same graph takes down more of the fleet the smaller alpha is (averaged over the
    last minute the replicas are still dead; retries off: load shifting alone)."""
    failed = []
    alphas = (0.02, 0.1, 0.2, 0.4, 0.8)
    for a in alphas:
        physics = (("headroom", (a, a + 0.3)), ("max_retries", 0), ("crash_after", 3.0))
        sc, ticks = run(one_episode("load_redistribution", 0.4, ramp_s=(0.0, 0.0),  # all at once
                                    trigger_s=(150.0, 150.0), physics_overrides=physics))
        end = int(sc.episodes[0].trigger_end_s)
        failed.append(float(np.mean([(~t["up"] | unhealthy(t["error_rate"], t["latency_p99_ms"], 1.0)).mean()
                                     for t in ticks[end - 60:end]])))  # the last minute of the hold
    assert all(x >= y - 0.01 for x, y in zip(failed, failed[1:])), dict(zip(alphas, failed))  # or saturated
    assert failed[0] >= 3 * failed[-1], dict(zip(alphas, failed))


def fleets(n: int, seed: int = 7) -> list[dict]:
    """Fleets like the training data's: sizes 60-200, both graph families."""
    rng = np.random.default_rng(seed)
    return [dict(n_agents=int(rng.choice([60, 120, 200])), seed=int(rng.integers(2**31)),
                 graph=str(rng.choice(["layered", "scale_free"]))) for _ in range(n)]


@pytest.mark.parametrize("mechanism", ["retry_storm", "load_redistribution", "timeout_propagation"])
def test_about_half_of_the_triggers_fizzle_and_onsets_come_late_in_the_build_up(mechanism):
    """Severities straddle each mechanism's threshold: over random fleets and severities a
    third to two thirds of the triggers cascade. Triggers build up gradually, so a cascade
    starts well after its trigger did (the build-up is the warning); rarely a fragile fleet
    tips over on its own before any trigger (spontaneous cascades are real, but rare)."""
    outcomes, delays = [], []
    for f in fleets(10):
        sc, _ = run(ScenarioConfig(duration_s=900, mechanisms=(mechanism,), **f))
        for lb in sc.labels:
            outcomes.append(lb.cascade)
            if lb.cascade:
                delays.append(lb.onset - lb.trigger_time)
    assert len(outcomes) >= 20
    assert 0.3 <= np.mean(outcomes) <= 0.7, (np.mean(outcomes), len(outcomes))
    d = np.array(delays)
    assert np.mean(d >= 0) >= 0.8 and np.median(d) >= 60 and np.mean(d >= 30) >= 0.8, sorted(delays)


def test_the_timeline_is_continuous_no_reset_at_episode_boundaries(monkeypatch):
    """The fleet is set up once and then only evolves: at every boundary between episodes
    the fleet is healthy and its load and latency carry on without a step."""
    from pipelines.simulation.fleet import Fleet

    resets = []
    real_reset = Fleet.reset
    monkeypatch.setattr(Fleet, "reset", lambda self, p: (resets.append(p), real_reset(self, p)))
    sc, ticks = run(ScenarioConfig(n_agents=120, duration_s=1800, seed=3))
    assert len(resets) == 1  # at construction only
    bounds = [int(ep.end_s) for ep in sc.episodes[:-1]]
    assert len(bounds) >= 3
    total = np.array([t["request_count"].sum() for t in ticks])
    p50 = np.array([np.median(t["latency_p50_ms"]) for t in ticks])
    for b in bounds:
        before, after = slice(b - 10, b), slice(b, b + 10)
        near = ticks[b - 10:b + 10]
        assert not any(unhealthy(t["error_rate"], t["latency_p99_ms"], 1.0).any() for t in near), b
        assert abs(total[after].mean() / total[before].mean() - 1) < 0.05, b
        assert abs(p50[after].mean() / p50[before].mean() - 1) < 0.05, b
    quiet = [ep.trigger_s - ep.start_s for ep in sc.episodes]
    assert np.ptp(quiet) > 20  # no fixed delay from a boundary to the next trigger


def test_cascade_labels_agree_with_the_telemetry_files(tmp_path):
    """Recompute, from the written NDJSON alone, the unhealthy agents outside the trigger's
    roots per tick: each labelled onset is the first tick of a run above the threshold,
    and fizzled triggers never reach one."""
    cfg = ScenarioConfig(n_agents=120, duration_s=500, seed=5, severities=(1.0, 0.0),
                         mechanisms=("timeout_propagation", "retry_storm"))
    doc = simulate_to_dir(Scenario(cfg), str(tmp_path))
    assert doc["cascades"] and doc["fizzles"]
    sick_by_tick: dict[float, set] = {}
    for name in sorted(os.listdir(tmp_path)):
        res = parse_file(str(tmp_path / name))
        assert not res.dead
        for r in res.records:
            if r["error_rate"] >= 0.5 or r["latency_p99_ms"] >= doc["timeout_ms"]:
                sick_by_tick.setdefault(r["event_time"], set()).add(r["agent_id"])
    threshold = doc["cascade_fraction"] * doc["n_agents"]
    need = int(doc["min_cascade_s"] / doc["tick_s"])

    def count(t, roots):
        return len(sick_by_tick.get(t, set()) - set(roots))

    for c in doc["cascades"]:
        onset = c["onset"]
        assert onset >= c["trigger_time"] - doc["tick_s"]
        assert all(count(onset + k * doc["tick_s"], c["root_agents"]) >= threshold for k in range(need))
        t = c["trigger_time"] // 1
        first = None
        while t < onset:  # no earlier run of `need` ticks above the threshold
            if all(count(t + k, c["root_agents"]) >= threshold for k in range(need)):
                first = t
                break
            t += 1
        assert first is None
        assert c["size"] == max(count(t, c["root_agents"]) for t in sick_by_tick
                                if c["trigger_time"] - 1 <= t <= c["end"] + 1)
    triggers = sorted(e["trigger_time"] for e in doc["cascades"] + doc["fizzles"])
    for f in doc["fizzles"]:
        later = [t for t in triggers if t > f["trigger_time"]]
        end = min(later) if later else doc["end"]
        t = f["trigger_time"] // 1
        while t + need <= end:  # never a run of `need` ticks above the threshold
            assert not all(count(t + k, f["root_agents"]) >= threshold for k in range(need)), t
            t += 1


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown mechanisms"):
        Scenario(ScenarioConfig(mechanisms=("meteor",)))
    with pytest.raises(ValueError, match="graph family"):
        Scenario(ScenarioConfig(graph="ring"))


def test_tick_records_are_the_tick_table():
    sc = Scenario(ScenarioConfig(n_agents=30, duration_s=3, seed=2))
    for epoch_s, tel in sc.ticks():
        rows = tick_table(sc, epoch_s, tel).to_pylist()
        for row in rows:
            row["ts"] = row["ts"].timestamp()
            row["event_time"] = row["ts"]
        assert tick_records(sc, epoch_s, tel) == rows


def test_trigger_state_follows_the_build_up_and_is_zero_between_triggers():
    """The ground truth of the label-ceiling benchmark: strength grows linearly over the
    ramp to the episode's magnitude, growth stops when it holds, nothing acts outside."""
    sc, _ = run(ScenarioConfig(n_agents=60, duration_s=600, seed=3, severities=(0.5,),
                               mechanisms=("timeout_propagation",)))
    ep = sc.episodes[0]
    names = Scenario.TRIGGER_STATE
    at = lambda t: dict(zip(names, sc.trigger_state(t)))  # noqa: E731
    assert not sc.trigger_state(ep.trigger_s - 1.0).any()
    assert not sc.trigger_state(ep.trigger_end_s + 1.0).any()
    half, full = at(ep.trigger_s + ep.ramp_s / 2 - 1.0), at(ep.trigger_end_s - 1.0)
    assert half["trigger_acting"] == 1.0 and half["mechanism_timeout_propagation"] == 1.0
    assert half["trigger_strength"] == pytest.approx(0.5 * full["trigger_strength"], rel=0.02)
    assert full["trigger_strength"] == pytest.approx(0.5)  # severity 0.5 of the magnitude range
    assert half["trigger_growth_per_min"] == pytest.approx(0.5 / ep.ramp_s * 60.0)
    assert full["trigger_growth_per_min"] == 0.0 and full["trigger_holding"] == 1.0
    assert half["trigger_age_s"] == pytest.approx(ep.ramp_s / 2 - 1.0)
