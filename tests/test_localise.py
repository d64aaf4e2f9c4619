"""Where to act: ranking a window's agents (pipelines/incidents/localise.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.backtest.columnar import parse_table, snapshot_from_table
from pipelines.incidents.localise import (
    blast_radius,
    entry_agents,
    first_failed,
    precision_at,
    rank_baseline,
    rank_targets,
    recall_at,
    services_ranked,
)
from pipelines.simulation.output import tick_table
from pipelines.simulation.scenario import Scenario, ScenarioConfig
from pipelines.windowing import WindowSnapshot, build_snapshot
from schemas.arrow import METRICS

T0 = 1_767_225_600.0


def rec(agent: str, t: float, p50: float, p99: float, err: float = 0.001, req: int = 100,
        cpu: float = 0.5, queue: int = 0, calls: tuple = ()) -> dict:
    r = {"tenant": "acme", "agent_id": agent, "event_time": t, "latency_p50_ms": p50,
         "latency_p99_ms": p99, "error_rate": err, "request_count": req, "cpu": cpu, "memory": 0.4,
         "queue_depth": queue, "in_flight": 3}
    r["calls"] = [{"dst": d, "count": c, "errors": 0, "latency_ms": lat} for d, c, lat in calls]
    return r


def fan_in() -> WindowSnapshot:
    """Entries e1..e3 -> mids m1, m2 -> slow leaf db (400 ms of its own); z is healthy and alone.
    The callers are slower than the leaf (they wait on it), so by p99 alone they come first."""
    recs = []
    for k in range(10):
        t = T0 + k
        recs += [rec("db", t, 400, 700, req=300, cpu=0.6),
                 rec("m1", t, 405, 750, req=200, calls=(("db", 200, 400.0),)),
                 rec("m2", t, 405, 750, req=100, calls=(("db", 100, 400.0),)),
                 rec("e1", t, 410, 800, req=100, calls=(("m1", 100, 405.0),)),
                 rec("e2", t, 410, 800, req=100, calls=(("m1", 100, 405.0),)),
                 rec("e3", t, 410, 800, req=100, calls=(("m2", 100, 405.0),)),
                 rec("z", t, 4, 8, req=50)]
    return build_snapshot("acme", T0, T0 + 10, recs)


def test_slow_leaf_with_many_callers_ranks_first():
    snap = fan_in()
    top = rank_targets(snap, k=3)
    assert top[0].agent == "db"
    assert top[0].callers == ("m1", "m2")  # most calls first
    assert top[0].blast == pytest.approx(6 / 7)  # every external request but z's reaches it
    assert {t.agent for t in top[1:]} <= {"m1", "m2", "e1", "e2", "e3"}
    assert rank_targets(snap, k=7)[-1].agent == "z"
    blast = dict(zip(snap.agents, blast_radius(snap)))
    assert blast["m1"] == pytest.approx(4 / 7) and blast["e1"] == 0.0 and blast["z"] == 0.0
    # the baseline sees only p99: the callers first, the leaf behind them
    base = [t.agent for t in rank_baseline(snap, k=7)]
    assert base[:3] == ["e1", "e2", "e3"] and base.index("db") == 5


def test_baseline_ranks_by_own_error_rate_and_p99():
    recs = [rec("a", T0, 50, 900), rec("b", T0, 10, 20, err=0.95), rec("c", T0, 30, 300),
            rec("d", T0, 5, 10, calls=(("a", 10, 2000.0),))]  # d's slow call is not its own p99
    top = rank_baseline(build_snapshot("acme", T0, T0 + 10, recs), k=10)
    assert [t.agent for t in top] == ["b", "a", "c", "d"]
    assert top[0].score == 0.95 and top[1].score == 0.9
    assert top[1].callers == ("d",)


def test_entry_agents_are_where_load_enters():
    assert entry_agents(fan_in()) == ["e1", "e2", "e3", "z"]
    # a destination that never reports serves nothing we can see: not an entry
    snap = build_snapshot("acme", T0, T0 + 10, [rec("a", T0, 5, 9, calls=(("db", 5, 3.0),))])
    assert entry_agents(snap) == ["a"]


def test_recall_and_precision_definitions():
    ranked = ["a", "b", "c", "d", "e", "f"]
    assert recall_at(ranked, {"a"}, 1) == 1.0
    assert recall_at(ranked, {"b"}, 1) == 0.0
    assert recall_at(ranked, {"b", "z"}, 5) == 0.5
    assert recall_at(ranked, set("abcdefg"), 5) == 1.0  # k places hold at most k of the truth
    assert recall_at(ranked, set("afg"), 1) == 1.0
    assert np.isnan(recall_at(ranked, set(), 5))
    assert precision_at(ranked, {"a", "c", "z"}, 5) == 0.4
    assert precision_at(["a", "b"], {"a"}, 5) == 0.2  # empty places count against it
    assert services_ranked(rank_targets(fan_in(), 7), lambda a: a[0]) == ["d", "m", "e", "z"]


def test_first_failed_takes_the_first_sustained_failures_within_the_window():
    sick = np.zeros((12, 4), dtype=bool)
    sick[1, 3] = True  # a one-tick blip
    sick[4:9, 0] = True
    sick[6:12, 1] = True  # 2 ticks after the first sustained failure
    sick[10:12, 2] = True  # too late for a 5-tick window
    group = np.array(["x", "y", "z", "w"])
    assert first_failed(sick, group, window=1) == {"w"}  # literal: any unhealthy tick counts
    assert first_failed(sick, group, window=5, persist=3) == {"x", "y"}
    assert first_failed(sick, group, window=8, persist=2) == {"x", "y", "z"}
    assert first_failed(np.zeros((5, 4), bool), group) == set()


def test_simulated_timeout_propagation_root_service_in_top5():
    cfg = ScenarioConfig(n_agents=60, duration_s=420.0, seed=3, mechanisms=("timeout_propagation",),
                         severities=(1.0,))
    sc = Scenario(cfg)
    tables = [tick_table(sc, t, tel) for t, tel in sc.ticks()]
    lb, ep = sc.labels[0], sc.episodes[0]
    assert lb.cascade
    end = T0 + np.floor((lb.onset - T0) / 10.0) * 10.0
    k1 = int(end - T0)
    snap = snapshot_from_table("acme", end - 10, end, parse_table(pa.concat_tables(tables[k1 - 10:k1]),
                                                                 "sim").table)
    service = dict(zip(sc.agents, sc.fleet.service.tolist()))
    ranked = services_ranked(rank_targets(snap, k=len(snap.agents)), service.get)
    assert set(ep.root_services) <= set(ranked[:5])


@st.composite
def snapshots(draw) -> WindowSnapshot:
    n = draw(st.integers(1, 6))
    names = [f"a{i}" for i in range(n)]
    recs = []
    for i, a in enumerate(names):
        for k in range(draw(st.integers(1, 3))):
            p50 = draw(st.floats(0, 2000))
            calls = tuple((names[j], draw(st.integers(0, 50)), draw(st.floats(0, 3000)))
                          for j in draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True)) if j != i)
            recs.append(rec(a, T0 + k, p50, p50 * draw(st.floats(1, 3)), err=draw(st.floats(0, 1)),
                            req=draw(st.integers(0, 500)), cpu=draw(st.floats(0, 1)),
                            queue=draw(st.integers(0, 20)), calls=calls))
    return build_snapshot("acme", T0, T0 + 10, recs)


@settings(max_examples=60, deadline=None)
@given(snapshots(), st.integers(0, 8), st.booleans())
def test_ranking_invariants(snap, k, topo):
    for ranked in (rank_targets(snap, k, use_topology=topo), rank_baseline(snap, k)):
        agents = [t.agent for t in ranked]
        assert len(agents) == min(k, len(snap.agents)) and len(set(agents)) == len(agents)
        assert set(agents) <= set(snap.agents)
        scores = [t.score for t in ranked]
        assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
        assert all(0.0 <= t.blast <= 1.0 and set(t.callers) <= set(snap.agents) for t in ranked)
    assert rank_targets(snap, k, use_topology=topo) == rank_targets(snap, k, use_topology=topo)
    assert snap.metrics.shape[1] == len(METRICS)
