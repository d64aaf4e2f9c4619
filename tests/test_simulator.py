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
    base = dict(n_agents=200, duration_s=300, seed=1, mechanisms=(mechanism,), severities=(severity,),
                episode_s=(300.0, 300.0), calm_s=(40.0, 40.0), trigger_s=(30.0, 30.0),
                pressure=(0.0, 0.0))  # no background load growth: the trigger alone
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
    ends; with 4 retries per call the retry load alone keeps it failed (metastable)."""
    outcome = {}
    for retries in (0, 4):
        sc, ticks = run(one_episode("retry_storm", 0.9, physics_overrides=(("max_retries", retries),)))
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
    the same graph takes down more of the fleet the smaller alpha is."""
    failed = []
    alphas = (0.02, 0.1, 0.2, 0.4, 0.8)
    for a in alphas:
        sc, ticks = run(one_episode("load_redistribution", 0.4, ramp_s=(0.0, 0.0),  # all at once
                                    physics_overrides=(("headroom", (a, a + 0.3)),)))
        last = ticks[-1]
        sick = unhealthy(last["error_rate"], last["latency_p99_ms"], 1.0)
        failed.append(float((~last["up"] | sick).mean()))
    assert all(x >= y for x, y in zip(failed, failed[1:])), dict(zip(alphas, failed))
    assert failed[0] >= 3 * failed[-1], dict(zip(alphas, failed))


@pytest.mark.parametrize("mechanism", ["retry_storm", "load_redistribution", "timeout_propagation"])
def test_triggers_sometimes_fizzle_and_sometimes_cascade(mechanism):
    outcomes = set()
    for seed in (1, 2, 3):
        for sev in (0.0, 0.15, 0.5, 1.0):
            sc, _ = run(one_episode(mechanism, sev, seed=seed))
            outcomes.add(sc.labels[0].cascade)
    assert outcomes == {True, False}


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
