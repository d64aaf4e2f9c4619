"""Window assignment and snapshots, against the plain-Python reference."""

from __future__ import annotations

import math
import random

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.telemetry import parse_lines
from pipelines.windowing import (
    WindowSpec,
    build_snapshot,
    slice_batches,
    snapshots_from_table,
    snapshots_to_table,
)
from schemas.arrow import SNAPSHOT
from tests.conftest import T0, line, record
from tests.reference import assert_snapshot_matches, reference_windows, window_starts


@given(t=st.floats(0, 2e9, allow_nan=False), size=st.sampled_from([1.0, 5.0, 10.0, 60.0]),
       k=st.integers(1, 4))
def test_window_starts_contain_the_time_and_match_the_reference(t, size, k):
    slide = size / k
    spec = WindowSpec(size, slide)
    starts = spec.starts(t)
    t_us, slide_us, size_us = round(t * 1e6), round(slide * 1e6), round(size * 1e6)
    # as many windows as slide multiples in (t - size, t], in the microseconds windows are
    # aligned in (size/slide can miss k by a hair there: 5 s / 1.666667 s)
    assert len(starts) == t_us // slide_us - (t_us - size_us) // slide_us
    assert len(starts) in (k, k + 1) or t_us % slide_us == 0 or size_us % slide_us
    for s in starts:
        assert round(s * 1e6) <= t_us < round(s * 1e6) + round(size * 1e6)
        assert round(s * 1e6) % round(slide * 1e6) == 0
    assert starts == window_starts(t, size, slide)


def test_lateness_rule_is_beams():
    spec = WindowSpec(10.0, None, 30.0)
    assert not spec.is_late(15.0, watermark=50.0)  # window [10, 20): expires after 50
    assert spec.is_late(15.0, watermark=50.001)


def random_records(rng: random.Random, n: int, agents=6, tenants=("acme", "beta")) -> list[dict]:
    out = []
    for _ in range(n):
        a = f"a{rng.randrange(agents)}"
        calls = [{"dst": f"a{rng.randrange(agents)}", "count": rng.randrange(20),
                  "errors": 0, "latency_ms": round(rng.uniform(1, 50), 3)} for _ in range(rng.randrange(3))]
        for c in calls:
            c["errors"] = rng.randrange(c["count"] + 1)
        p50 = round(rng.uniform(1, 100), 3)
        out.append(record(agent=a, t=T0 + rng.randrange(0, 60) + rng.choice([0, 0.5]),
                          tenant=rng.choice(tenants), calls=calls, latency_p50_ms=p50,
                          latency_p99_ms=p50 * 2, error_rate=round(rng.random(), 4),
                          request_count=rng.randrange(1000)))
    return parse_lines([line(r) for r in out], "gen").records


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.sampled_from([10.0, 20.0]), k=st.sampled_from([1, 2]))
def test_snapshots_equal_the_reference_whatever_the_record_order(seed, size, k):
    rng = random.Random(seed)
    recs = random_records(rng, 80)
    recs += [dict(recs[0]), dict(recs[1])]  # redelivered duplicates
    spec = WindowSpec(size, size / k)
    ref = reference_windows(recs, size, size / k)
    groups: dict = {}
    for (tenant, batch), start in slice_batches(recs, spec):
        for s in spec.starts(start):
            groups.setdefault((tenant, s), []).extend(batch)
    assert set(groups) == set(ref)
    for (tenant, s), rs in groups.items():
        rng.shuffle(rs)
        snap = build_snapshot(tenant, s, s + size, rs)
        assert_snapshot_matches(snap, ref[(tenant, s)])


def test_snapshot_parquet_round_trip():
    recs = random_records(random.Random(1), 30, tenants=("acme",))
    snap = build_snapshot("acme", T0, T0 + 60, recs)
    table = snapshots_to_table([snap])
    assert table.schema.equals(SNAPSHOT)
    back = pa.Table.from_pylist(table.to_pylist(), schema=SNAPSHOT)
    [again] = snapshots_from_table(back)
    assert again.agents == snap.agents and again.n_records == snap.n_records
    assert (again.edge_count == snap.edge_count).all()
    assert ((again.metrics == snap.metrics) | (again.metrics != again.metrics)).all()


def test_window_without_calls_and_destination_only_agents():
    recs = parse_lines([line(record(agent="a", calls=[])),
                        line(record(agent="b", calls=[{"dst": "c", "count": 0, "errors": 0,
                                                       "latency_ms": 1.0}]))], "s").records
    snap = build_snapshot("acme", T0, T0 + 10, recs)
    assert snap.agents == ["a", "b", "c"]
    assert list(snap.n_samples) == [1, 1, 0]
    assert math.isnan(snap.metrics[2, 0])
    assert (snap.edge_count == [0]).all() and (snap.edge_latency_ms == [1.0]).all()
