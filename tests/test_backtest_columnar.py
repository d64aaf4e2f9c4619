"""The backtest's columnar path against the per-record path: same records, same dead
letters (reason, detail, position, raw), same snapshots, same features as the job."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.backtest.columnar import (
    parse_file_columnar,
    parse_ndjson_bytes,
    parse_table,
    slice_tables,
    snapshot_from_table,
)
from pipelines.telemetry import TimestampGuard, parse_lines, parse_parquet
from pipelines.windowing import WindowSpec, build_snapshot, slice_batches
from schemas.arrow import METRICS, TELEMETRY
from tests.conftest import T0, iso, record

SNAP_FIELDS = ("agents", "n_samples", "metrics", "edge_src", "edge_dst", "edge_count", "edge_errors",
               "edge_latency_ms", "sample_agent", "sample_offset_s", "sample_values", "n_records",
               "n_duplicates")


def _norm(rec: dict) -> tuple:
    return (rec["tenant"], rec["agent_id"], float(rec["event_time"]), *[float(rec[m]) for m in METRICS],
            tuple((c["dst"], float(c["count"]), float(c["errors"]), float(c["latency_ms"]))
                  for c in rec["calls"]))


def _dead(dead) -> list[tuple]:
    return sorted((d.position, d.reason, d.detail, d.source, d.raw) for d in dead)


def assert_same_as_per_record(data: bytes, guard: TimestampGuard | None) -> None:
    want = parse_lines(io.BytesIO(data), "f.ndjson", guard)
    got = parse_ndjson_bytes(data, "f.ndjson", guard)
    assert got.n_read == want.n_read
    assert _dead(got.dead) == _dead(want.dead)
    rows = got.table.to_pylist()
    assert [r["position"] for r in rows] == [pos for _, pos in want.origins]
    assert [_norm(r) for r in rows] == [_norm(r) for r in want.records]
    assert got.n_read == got.table.num_rows + len(got.dead)


# -- mutations a producer gets wrong ----------------------------------------------------------
def _mutate(rec: dict, kind: str, draw) -> bytes:
    r = dict(rec)
    if kind == "missing":
        del r[draw(st.sampled_from(sorted(r)))]
    elif kind == "unknown":
        r["colour"] = "blue"
    elif kind == "wrong_type":
        r[draw(st.sampled_from(["error_rate", "request_count", "tenant", "calls", "cpu"]))] = \
            draw(st.sampled_from(["x", True, None, [1], 1.5, {"a": 1}]))
    elif kind == "range":
        r[draw(st.sampled_from(["error_rate", "cpu", "memory", "latency_p50_ms", "queue_depth"]))] = \
            draw(st.sampled_from([-1, 1.5, 4e6, -0.0001]))
    elif kind == "inconsistent":
        r["latency_p99_ms"] = r["latency_p50_ms"] - 1
    elif kind == "call":
        c = dict(r["calls"][0]) if r["calls"] else {"dst": "db", "count": 1, "errors": 0, "latency_ms": 1.0}
        change = draw(st.sampled_from(["errors>count", "extra", "missing", "neg", "dst", "float_count"]))
        if change == "errors>count":
            c["errors"] = c["count"] + 1
        elif change == "extra":
            c["zone"] = "eu"
        elif change == "missing":
            del c["latency_ms"]
        elif change == "neg":
            c["latency_ms"] = -1.0
        elif change == "dst":
            c["dst"] = ""
        else:
            c["count"] = 2.0
        r["calls"] = [c]
    elif kind == "ts":
        r["ts"] = draw(st.sampled_from(["2026-01-01T00:00:01", "yesterday", "2026-02-30T00:00:00Z", -5,
                                        T0 + 3.25, int(T0) + 2, "2026-01-01T00:00:01.5+02:00", 1e12,
                                        iso(T0 + 7200), "2026-01-01 00:00:02Z"]))
    elif kind == "tenant":
        r["tenant"] = draw(st.sampled_from(["-bad", "a" * 65, "ok.tenant-1", "é", "acme\n"]))
    elif kind == "schema_version":
        r["schema_version"] = draw(st.sampled_from([1, 2, 1.0]))
    elif kind == "int_as_float":
        r["request_count"] = 100.0
    elif kind == "neg_zero":
        return orjson.dumps(r).replace(b'"queue_depth":2', b'"queue_depth":-0')
    elif kind == "nan":
        return orjson.dumps(r).replace(b'"cpu":0.4', b'"cpu":NaN')
    elif kind == "dup_key":
        return orjson.dumps(r)[:-1] + b',"cpu":0.9}'
    elif kind == "malformed":
        raw = orjson.dumps(r)
        return raw[: draw(st.integers(1, len(raw) - 1))]
    elif kind == "not_object":
        return draw(st.sampled_from([b"[1,2]", b'"x"', b"5", b"null"]))
    elif kind == "two_objects":
        return orjson.dumps(r) + b" " + orjson.dumps(r)
    return orjson.dumps(r)


KINDS = ["ok", "ok", "ok", "missing", "unknown", "wrong_type", "range", "inconsistent", "call", "ts",
         "tenant", "schema_version", "int_as_float", "neg_zero", "nan", "dup_key", "malformed", "not_object",
         "two_objects"]


@st.composite
def ndjson_files(draw) -> bytes:
    n = draw(st.integers(1, 40))
    lines = []
    for i in range(n):
        calls = [{"dst": f"b{j}", "count": draw(st.integers(0, 50)), "errors": 0,
                  "latency_ms": draw(st.floats(0, 5000, allow_nan=False))}
                 for j in range(draw(st.integers(0, 3)))]
        rec = record(agent=f"a{draw(st.integers(0, 5))}", t=T0 + draw(st.integers(0, 30)) + i % 3 * 0.25,
                     tenant=draw(st.sampled_from(["acme", "globex"])), calls=calls,
                     error_rate=draw(st.floats(0, 1)), latency_p50_ms=draw(st.floats(0, 100)))
        rec["latency_p99_ms"] = rec["latency_p50_ms"] + draw(st.floats(0, 500))
        lines.append(_mutate(rec, draw(st.sampled_from(KINDS)), draw))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b"", b"   ", b"\r"])))
    sep = draw(st.sampled_from([b"\n", b"\r\n"]))
    return sep.join(lines) + draw(st.sampled_from([b"", sep]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ndjson_files(), st.booleans())
def test_ndjson_columnar_parse_equals_per_record_parser(data, guarded):
    assert_same_as_per_record(data, TimestampGuard() if guarded else None)


def test_far_timestamps_are_dead_lettered_like_the_guard():
    recs = [record(agent=f"a{i}", t=T0 + i) for i in range(9)] + [record(agent="z", t=T0 + 90_000)]
    assert_same_as_per_record(b"\n".join(orjson.dumps(r) for r in recs), TimestampGuard())


def _telemetry_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TELEMETRY)


def test_parquet_columnar_parse_equals_per_record_parser(tmp_path):
    import datetime as dt

    def row(i, **kw):
        r = record(agent=f"a{i}", t=T0 + i)
        r["ts"] = dt.datetime.fromtimestamp(T0 + i + 0.125, dt.UTC)
        r.update(kw)
        return r

    rows = [row(i) for i in range(20)]
    rows[3]["error_rate"] = 1.5
    rows[4]["latency_p99_ms"] = 1.0  # < p50
    rows[5]["cpu"] = float("nan")
    rows[6]["tenant"] = "bad tenant"
    rows[7]["calls"] = [{"dst": "db", "count": 1, "errors": 3, "latency_ms": 1.0}]
    rows[8]["ts"] = dt.datetime(1960, 1, 1, tzinfo=dt.UTC)
    rows[9]["agent_id"] = ""
    rows[10]["queue_depth"] = -3
    rows[11]["ts"] = dt.datetime.fromtimestamp(T0 + 200_000, dt.UTC)  # far from the others
    path = str(tmp_path / "t.parquet")
    pq.write_table(_telemetry_table(rows), path)
    want = parse_parquet(path, TimestampGuard())
    got = parse_file_columnar(path, TimestampGuard())
    assert got.n_read == want.n_read == 20
    assert _dead(got.dead) == _dead(want.dead) and len(got.dead) == 9
    assert [_norm(r) for r in got.table.to_pylist()] == [_norm(r) for r in want.records]


def test_unreadable_and_foreign_parquet_fall_back_to_the_per_record_reader(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    got, want = parse_file_columnar(str(bad)), parse_parquet(str(bad))
    assert got.n_read == want.n_read == 1 and _dead(got.dead) == _dead(want.dead)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"tenant": ["acme"], "x": [1]}), str(other))
    got, want = parse_file_columnar(str(other)), parse_parquet(str(other))
    assert _dead(got.dead) == _dead(want.dead) and got.table.num_rows == 0


def _assert_snapshots_equal(a, b) -> None:
    for f in SNAP_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=True), f
        else:
            assert x == y, f


@pytest.mark.parametrize("slide", [None, 5.0])
def test_snapshots_from_tables_equal_build_snapshot(slide):
    rng = np.random.default_rng(3)
    recs = []
    for _ in range(300):
        calls = [{"dst": f"a{int(j)}", "count": int(rng.integers(0, 9)), "errors": 0,
                  "latency_ms": float(rng.uniform(0, 50))} for j in rng.integers(0, 30, rng.integers(0, 4))]
        recs.append(record(agent=f"a{int(rng.integers(0, 25))}", t=T0 + float(rng.uniform(0, 40)),
                           tenant=str(rng.choice(["acme", "globex"])), calls=calls,
                           request_count=int(rng.integers(0, 500))))
    recs.append(dict(recs[0]))  # a repeated (agent, time) sample: the tie-breaking path
    data = b"\n".join(orjson.dumps(r) for r in recs)
    spec = WindowSpec(10.0, slide)
    per_record = parse_lines(io.BytesIO(data), "f").records
    ref: dict = {}
    for (tenant, batch), start in slice_batches(per_record, spec):
        for s in spec.starts(start):
            ref.setdefault((tenant, s), []).extend(batch)
    got: dict = {}
    for (tenant, rows), start in slice_tables(parse_ndjson_bytes(data, "f").table, spec):
        for s in spec.starts(start):
            got.setdefault((tenant, s), []).append(rows)
    assert set(got) == set(ref)
    for (tenant, s), tables in got.items():
        snap = snapshot_from_table(tenant, s, s + 10.0, pa.concat_tables(tables))
        _assert_snapshots_equal(snap, build_snapshot(tenant, s, s + 10.0, ref[(tenant, s)]))


def test_backtest_pipeline_features_equal_the_batch_job(tmp_path):
    """The same NDJSON files through `aura run --mode batch` (per-record path) and the
    backtest's Beam pipeline (columnar): identical feature vectors and predictions."""
    from pipelines.beam import job
    from pipelines.beam.backtest import run_backtest_pipeline
    from pipelines.inference import PredictorSpec
    from pipelines.inputs import expand_inputs
    from pipelines.predictions import read_predictions
    from pipelines.simulation.output import simulate_to_dir
    from pipelines.simulation.scenario import Scenario, ScenarioConfig
    from pipelines.topology.features import FeatureExtractor
    from pipelines.topology.rows import vectors

    tele = str(tmp_path / "tele")
    simulate_to_dir([Scenario(ScenarioConfig(n_agents=40, duration_s=50, seed=s, tenant=f"t{s}"))
                     for s in (1, 2)], tele)
    with open(os.path.join(tele, "part-000002.ndjson"), "ab") as fh:
        fh.write(b'{"broken\n' + orjson.dumps(record(tenant="t1", error_rate=3.0)) + b"\n")
    paths = expand_inputs(tele)
    spec, ex, pred = WindowSpec(), FeatureExtractor(), PredictorSpec()
    out_job = str(tmp_path / "job")
    summary = job.run_batch(paths, spec, out_job, ex, pred)
    res = run_backtest_pipeline(paths, spec, str(tmp_path / "bt"), ex, pred)
    assert res.reconciles and summary.reconciles
    assert res.read == summary.read and res.counts["dead.malformed_json"] == 1
    assert res.counts["dead.out_of_range"] == 1
    want = {}
    for p in glob.glob(os.path.join(out_job, "features", "*", "*.parquet")):
        t = pq.read_table(p)
        want[(t.column("tenant")[0].as_py(), t.column("window_start")[0].value)] = vectors(t)[0]
    got = {(tenant, int(w)): v for tenant, (starts, _, m) in res.features.items() for w, v in zip(starts, m)}
    assert set(got) == set(want) and len(got) == 10
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    preds = read_predictions(out_job)
    job_p = {(r["tenant"], int(r["window_start"].timestamp() * 1000)): r["probability"]
             for r in preds.to_pylist()}
    assert {k: r["probability"] for k, r in res.predictions.items()} == job_p


def test_simulated_table_parses_clean():
    from pipelines.backtest.columnar import simulated_table
    from pipelines.simulation.scenario import Scenario, ScenarioConfig

    table, labels = simulated_table(Scenario(ScenarioConfig(n_agents=30, duration_s=20, seed=4)))
    res = parse_table(table, "sim", TimestampGuard())
    assert res.n_read == 600 and res.table.num_rows == 600 and not res.dead
    assert labels["tenant"] == "acme"
