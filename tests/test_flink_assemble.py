"""The Flink adapter's window assembly (no Flink needed): the packed records of a window, in
any order and joined as the JVM joins them, give the same WindowSnapshot as ``build_snapshot`` over
the records, duplicates included; each record counts once over overlapping windows."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipelines.flink.assemble import fresh_count, join, pack, unpack, window_snapshot
from pipelines.windowing import WindowSpec, build_snapshot
from schemas.arrow import METRICS
from tests.conftest import T0
from tests.test_windowing import random_records


def _assert_same(got, want) -> None:
    assert got.agents == want.agents
    assert (got.n_records, got.n_duplicates) == (want.n_records, want.n_duplicates)
    for name in ("n_samples", "sample_agent", "edge_src", "edge_dst", "edge_count", "edge_errors",
                 "metrics", "sample_offset_s", "sample_values", "edge_latency_ms"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def calls_of(w, i: int) -> list[tuple]:
    """Record i's calls from a window's columns: (dst, count, errors, latency_ms)."""
    first = int(w.n_calls[:i].sum())
    calls = range(first, first + int(w.n_calls[i]))
    return [(w.names[int(w.dst[k])], *w.call_values[k].tolist()) for k in calls]


def test_pack_round_trip_keeps_every_bit_and_the_calls():
    rng = random.Random(3)
    recs = random_records(rng, 30)
    recs[0]["agent_id"] = 'quote " back \\ ctrl \x01 \n ü 😀'
    recs[1]["calls"] = [{"dst": recs[0]["agent_id"], "count": 3, "errors": 1, "latency_ms": 2}]
    w = unpack(*join([pack(r) for r in recs], closed_ms=123))
    assert w.closed_ms == 123
    assert w.event_time.tolist() == [r["event_time"] for r in recs]
    assert w.values.tolist() == [[float(r[m]) for m in METRICS] for r in recs]
    assert [w.names[a] for a in w.agent.tolist()] == [r["agent_id"] for r in recs]
    assert len(w.names) == len(set(w.names))
    for i, r in enumerate(recs):
        assert calls_of(w, i) == [(c["dst"], float(c["count"]), float(c["errors"]), float(c["latency_ms"]))
                                  for c in r["calls"]]
    assert w.duplicates == {}


@pytest.mark.parametrize("seed", range(5))
def test_assembled_window_equals_build_snapshot(seed):
    rng = random.Random(seed)
    recs = [r for r in random_records(rng, 120, tenants=("acme",)) if r["event_time"] < T0 + 10]
    recs += [dict(r) for r in rng.sample(recs, 5)]  # exact duplicates
    recs += [dict(r, cpu=0.123) for r in rng.sample(recs, 3)]  # same (agent, ts), other content
    twin = dict(recs[0], calls=[{"dst": "zz", "count": 1, "errors": 0, "latency_ms": 1.0}])
    recs.append(twin)  # same (agent, ts) and metrics, other calls: the tie is broken on the calls
    packed = [pack(r) for r in recs]
    rng.shuffle(packed)
    got, et = window_snapshot("acme", int(T0 * 1000), int((T0 + 10) * 1000), *join(packed))
    _assert_same(got, build_snapshot("acme", T0, T0 + 10, recs))
    assert len(unpack(*join(packed)).duplicates) > got.n_duplicates  # all records sharing (agent, ts)
    assert got.n_duplicates >= 9 and sorted(et.tolist()) == sorted(r["event_time"] for r in recs)


def test_assembled_window_without_duplicates():
    rng = random.Random(9)
    recs = {}
    for r in random_records(rng, 200, tenants=("acme",)):
        if r["event_time"] < T0 + 10:
            recs.setdefault((r["agent_id"], r["event_time"]), r)
    got, _ = window_snapshot("acme", int(T0 * 1000), int((T0 + 10) * 1000),
                             *join([pack(r) for r in recs.values()]))
    _assert_same(got, build_snapshot("acme", T0, T0 + 10, list(recs.values())))
    assert got.n_duplicates == 0 and len(got.edge_src) > 0


def test_a_dropped_duplicates_callee_is_not_a_name_and_an_empty_window_is_empty():
    rec = {"agent_id": "b", "event_time": T0 + 1, **{m: 1.0 for m in METRICS},
           "calls": [{"dst": "c", "count": 1, "errors": 0, "latency_ms": 1.0}]}
    twin = dict(rec, cpu=2.0, calls=[{"dst": "a", "count": 1, "errors": 0, "latency_ms": 1.0}])
    got, _ = window_snapshot("acme", int(T0 * 1000), int((T0 + 10) * 1000), *join([pack(twin), pack(rec)]))
    _assert_same(got, build_snapshot("acme", T0, T0 + 10, [twin, rec]))
    assert got.agents == ["b", "c"]
    got, et = window_snapshot("acme", int(T0 * 1000), int((T0 + 10) * 1000), *join([]))
    _assert_same(got, build_snapshot("acme", T0, T0 + 10, []))
    assert len(et) == 0


def test_each_record_counts_once_over_sliding_windows():
    spec = WindowSpec(10.0, 2.5)
    times = [T0 + i * 0.37 for i in range(200)]
    total = 0
    for start in sorted({s for t in times for s in spec.starts(t)}):
        inside = np.array([t for t in times if start <= t < start + 10])
        total += fresh_count(inside, int(round(start * 1000)), 10_000, 2_500)
    assert total == len(times)
