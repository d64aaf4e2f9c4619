"""The telemetry contract: every bad record becomes a dead letter with a reason, the
original bytes and its position; the fast validator agrees with the JSON Schema."""

from __future__ import annotations

import base64
import json

import jsonschema
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import telemetry as tm
from schemas import TELEMETRY_JSON_SCHEMA
from schemas.arrow import METRICS, TELEMETRY
from tests.conftest import T0, line, record, write_ndjson

GOOD = record()
BAD_CASES = [
    (line(GOOD)[:-5], tm.MALFORMED_JSON),
    (b"[1, 2]", tm.NOT_AN_OBJECT),
    (line({k: v for k, v in GOOD.items() if k != "cpu"}), tm.MISSING_FIELD),
    (line({**GOOD, "error_rate": 1.7}), tm.OUT_OF_RANGE),
    (line({**GOOD, "latency_p50_ms": -1.0, "latency_p99_ms": 2.0}), tm.OUT_OF_RANGE),
    (line({**GOOD, "request_count": "100"}), tm.WRONG_TYPE),
    (line({**GOOD, "request_count": 1.5}), tm.WRONG_TYPE),
    (line({**GOOD, "ts": True}), tm.WRONG_TYPE),
    (line({**GOOD, "ts": "not a time"}), tm.BAD_TIMESTAMP),
    (line({**GOOD, "ts": "2026-01-01T00:00:01"}), tm.BAD_TIMESTAMP),  # no offset
    (line({**GOOD, "ts": 1e300}), tm.BAD_TIMESTAMP),
    (line({**GOOD, "extra": 1}), tm.UNKNOWN_FIELD),
    (line({**GOOD, "latency_p99_ms": 5.0}), tm.INCONSISTENT),  # p99 < p50
    (line({**GOOD, "calls": [{"dst": "b", "count": 1, "errors": 2, "latency_ms": 1.0}]}), tm.INCONSISTENT),
    (line({**GOOD, "calls": [{"dst": "b", "count": 1}]}), tm.MISSING_FIELD),
    (line({**GOOD, "tenant": "bad tenant!"}), tm.INVALID_VALUE),
    (json.dumps({**GOOD, "cpu": float("nan")}).encode(), tm.MALFORMED_JSON),  # NaN is not JSON
]


@pytest.mark.parametrize(("raw", "reason"), BAD_CASES)
def test_bad_records_become_dead_letters_with_reason_bytes_and_position(raw, reason):
    res = tm.parse_lines([line(GOOD), raw, line(GOOD)], "src.ndjson")
    assert res.n_read == 3
    assert len(res.records) == 2
    [dead] = res.dead
    assert (dead.reason, dead.raw, dead.source, dead.position) == (reason, raw, "src.ndjson", 2)
    assert dead.detail


def test_good_record_gets_event_time_from_rfc3339_or_epoch():
    res = tm.parse_lines([line(record(t=T0 + 1.5)), line({**GOOD, "ts": T0 + 2})], "s")
    assert [r["event_time"] for r in res.records] == [T0 + 1.5, T0 + 2]
    assert not res.dead


def test_blank_lines_are_not_records():
    res = tm.parse_lines([b"", line(GOOD), b"   ", b"\n"], "s")
    assert (res.n_read, len(res.records), len(res.dead)) == (1, 1, 0)


def test_timestamp_guard_rejects_absurd_times_against_the_watermark():
    guard = tm.TimestampGuard(max_ahead_s=3600, max_behind_s=86400)
    lines = [line(record(t=T0 + i)) for i in range(5)]
    lines += [line(record(t=T0 + 10 * 86400)), line(record(t=T0 - 3 * 86400))]
    res = tm.parse_lines(lines, "s", guard)  # no watermark yet: reference is the batch median
    assert len(res.records) == 5
    assert [d.reason for d in res.dead] == [tm.TIMESTAMP_TOO_FAR] * 2
    assert [d.position for d in res.dead] == [6, 7]
    guard.watermark = T0 + 86400 * 2  # now the stream is two days on: T0 is absurdly old
    res = tm.parse_lines([line(record(t=T0))], "s", guard)
    assert [d.reason for d in res.dead] == [tm.TIMESTAMP_TOO_FAR]


def test_arrow_schema_matches_json_schema():
    schema = json.loads(TELEMETRY_JSON_SCHEMA.read_text())
    required = set(schema["required"])
    assert set(TELEMETRY.names) == required
    assert all(not TELEMETRY.field(n).nullable for n in TELEMETRY.names)
    for m in METRICS:
        json_type = schema["properties"][m]["type"]
        arrow_type = TELEMETRY.field(m).type
        assert (json_type == "integer") == pa.types.is_integer(arrow_type), m
    call_fields = set(schema["properties"]["calls"]["items"]["required"])
    assert call_fields == {f.name for f in TELEMETRY.field("calls").type.value_type}


def test_parquet_rows_parse_like_ndjson(tmp_path):
    recs = [record(agent=f"a{i}", t=T0 + i) for i in range(4)]
    nd = tm.parse_file(write_ndjson(tmp_path / "x.ndjson", [line(r) for r in recs]))
    rows = [{**r, "ts": pa.scalar(int((T0 + i) * 1000), pa.timestamp("ms", tz="UTC")).as_py()}
            for i, r in enumerate(recs)]
    pq.write_table(pa.Table.from_pylist(rows, schema=TELEMETRY), tmp_path / "x.parquet")
    pa_res = tm.parse_file(str(tmp_path / "x.parquet"))
    strip = [{k: v for k, v in r.items() if k != "ts"} for r in nd.records]
    assert [{k: v for k, v in r.items() if k != "ts"} for r in pa_res.records] == strip
    assert pa_res.n_read == 4 and not pa_res.dead


def test_bad_parquet_rows_and_unreadable_files_are_dead_letters(tmp_path):
    schema = pa.schema([f if f.name != "error_rate" else pa.field("error_rate", pa.float64())
                        for f in TELEMETRY])
    rows = [dict(record(t=T0), ts=pa.scalar(int(T0 * 1000), pa.timestamp("ms", tz="UTC")).as_py()),
            dict(record(t=T0), error_rate=1.7,
                 ts=pa.scalar(int(T0 * 1000), pa.timestamp("ms", tz="UTC")).as_py())]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "b.parquet")
    res = tm.parse_file(str(tmp_path / "b.parquet"))
    assert (res.n_read, len(res.records)) == (2, 1)
    assert (res.dead[0].reason, res.dead[0].position) == (tm.OUT_OF_RANGE, 1)
    assert orjson.loads(res.dead[0].raw)["error_rate"] == 1.7
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    res = tm.parse_file(str(tmp_path / "junk.parquet"))
    assert (res.n_read, res.dead[0].reason) == (1, tm.UNREADABLE_FILE)


# -- properties ----------------------------------------------------------------------------
_REFERENCE = jsonschema.Draft202012Validator(json.loads(TELEMETRY_JSON_SCHEMA.read_text()))
_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(-10, 2e6, allow_nan=False),
                    st.text(max_size=5), st.lists(st.integers(-100, 100), max_size=2))


@st.composite
def mutated_records(draw):
    rec = record(calls=[{"dst": "x", "count": 3, "errors": 1, "latency_ms": 2.0}])
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(rec) + ["extra"]))
        if draw(st.booleans()) and key in rec:
            del rec[key]
        else:
            rec[key] = draw(_values)
    return rec


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_records())
def test_fast_validator_agrees_with_the_json_schema(rec):
    """fastjsonschema (the hot path) accepts exactly what the reference validator accepts;
    the parser's extra checks only ever reject more."""
    schema_ok = _REFERENCE.is_valid(rec)
    parsed, reason, _ = tm.validate(dict(rec))
    if parsed is not None:
        assert schema_ok
    elif reason in (tm.INCONSISTENT, tm.BAD_TIMESTAMP, tm.OUT_OF_RANGE) and schema_ok:
        pass  # semantic checks beyond the schema
    else:
        assert not schema_ok, reason


@settings(max_examples=200)
@given(st.lists(st.one_of(st.binary(max_size=40), st.builds(line, mutated_records())), max_size=20))
def test_parsing_never_raises_and_counts_reconcile(lines):
    lines = [ln.replace(b"\n", b" ").replace(b"\r", b" ") for ln in lines]
    res = tm.parse_lines(lines, "fuzz", tm.TimestampGuard())
    assert res.n_read == len(res.records) + len(res.dead)
    assert res.n_read == sum(1 for ln in lines if ln.strip())


def test_dead_letter_keeps_the_exact_bytes_even_when_not_utf8():
    raw = b'{"tenant": "\xff\xfe"}'
    [dead] = tm.parse_lines([raw], "s").dead
    d = dead.to_dict()
    assert "raw" not in d and base64.b64decode(d["raw_base64"]) == raw
    assert tm.parse_lines([b'{"x": 1}'], "s").dead[0].to_dict()["raw"] == '{"x": 1}'
