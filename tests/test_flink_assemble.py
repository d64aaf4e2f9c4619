"""The Flink adapter's window assembly (no Flink needed): per-agent sample arrays in any order
plus per-edge sums give the same WindowSnapshot as ``build_snapshot`` over the records,
duplicates included; each record counts once over overlapping windows."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from pipelines.flink.assemble import AgentRow, EdgeRow, fresh_count, to_snapshot
from pipelines.windowing import WindowSpec, build_snapshot
from schemas.arrow import METRICS
from tests.conftest import T0
from tests.test_windowing import random_records


def _canonical(calls: list[dict]) -> str:  # what Flink's JSON_QUERY hands over: keys sorted
    return orjson.dumps([dict(sorted(c.items())) for c in calls]).decode()


def _rows(records: list[dict], rng: random.Random) -> tuple[list[AgentRow], list[EdgeRow]]:
    """What the two SQL window aggregates produce (array order shuffled)."""
    agents: dict[str, list[dict]] = {}
    edges: dict[tuple[str, str], list] = {}
    for r in records:
        agents.setdefault(r["agent_id"], []).append(r)
        for c in r["calls"]:
            e = edges.setdefault((r["agent_id"], c["dst"]), [0, 0, 0.0, 0.0, 0])
            e[0] += c["count"]
            e[1] += c["errors"]
            e[2] += c["count"] * c["latency_ms"]
            e[3] += c["latency_ms"]
            e[4] += 1
    rows = []
    for a, recs in agents.items():
        recs = rng.sample(recs, len(recs))
        rows.append(AgentRow(a, tuple(r["event_time"] for r in recs),
                             tuple(tuple(float(r[m]) for r in recs) for m in METRICS),
                             tuple(_canonical(r["calls"]) for r in recs)))
    return rows, [EdgeRow(s, d, *v) for (s, d), v in edges.items()]


def _assert_same(got, want) -> None:
    assert got.agents == want.agents
    assert (got.n_records, got.n_duplicates) == (want.n_records, want.n_duplicates)
    for name in ("n_samples", "sample_agent", "edge_src", "edge_dst", "edge_count", "edge_errors"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("metrics", "sample_offset_s", "sample_values", "edge_latency_ms"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12, equal_nan=True,
                                   err_msg=name)


@pytest.mark.parametrize("seed", range(5))
def test_assembled_window_equals_build_snapshot(seed):
    rng = random.Random(seed)
    recs = [r for r in random_records(rng, 120, tenants=("acme",)) if r["event_time"] < T0 + 10]
    recs += [dict(r) for r in rng.sample(recs, 5)]  # exact duplicates
    recs += [dict(r, cpu=0.123) for r in rng.sample(recs, 3)]  # same (agent, ts), other content
    agents, edges = _rows(recs, rng)
    got = to_snapshot("acme", int(T0 * 1000), int((T0 + 10) * 1000), agents, edges)
    _assert_same(got, build_snapshot("acme", T0, T0 + 10, recs))
    assert got.n_duplicates >= 5


def test_assembled_window_without_duplicates_uses_the_sql_edge_sums():
    rng = random.Random(9)
    recs = {}
    for r in random_records(rng, 200, tenants=("acme",)):
        if r["event_time"] < T0 + 10:
            recs.setdefault((r["agent_id"], r["event_time"]), r)
    agents, edges = _rows(list(recs.values()), rng)
    got = to_snapshot("acme", int(T0 * 1000), int((T0 + 10) * 1000), agents, edges)
    _assert_same(got, build_snapshot("acme", T0, T0 + 10, list(recs.values())))
    assert got.n_duplicates == 0


def test_each_record_counts_once_over_sliding_windows():
    spec = WindowSpec(10.0, 2.5)
    times = [T0 + i * 0.37 for i in range(200)]
    total = 0
    for start in sorted({s for t in times for s in spec.starts(t)}):
        inside = [t for t in times if start <= t < start + 10]
        total += fresh_count(inside, int(round(start * 1000)), 10_000, 2_500)
    assert total == len(times)
