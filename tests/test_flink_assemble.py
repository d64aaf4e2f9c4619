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


def test_pack_round_trip_keeps_every_bit_and_the_calls():
    rng = random.Random(3)
    recs = random_records(rng, 30)
    recs[0]["agent_id"] = 'quote " back \\ ctrl \x01 ü 😀'
    et, values, meta = unpack(*join([pack(r) for r in recs]))
    assert et.tolist() == [r["event_time"] for r in recs]
    assert values.tolist() == [[float(r[m]) for m in METRICS] for r in recs]
    assert meta == [[r["agent_id"], r["calls"]] for r in recs]


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


def test_each_record_counts_once_over_sliding_windows():
    spec = WindowSpec(10.0, 2.5)
    times = [T0 + i * 0.37 for i in range(200)]
    total = 0
    for start in sorted({s for t in times for s in spec.starts(t)}):
        inside = np.array([t for t in times if start <= t < start + 10])
        total += fresh_count(inside, int(round(start * 1000)), 10_000, 2_500)
    assert total == len(times)
