"""The Flink job's JVM parser (``pipelines/flink/java``, run through its small ``ParseMain``,
not through PyFlink) against the contract's validator ``parse_line``: it never accepts a line
that ``parse_line`` rejects, accepts the forms it supports, and gives bit-identical event
times and metrics and the same agent and calls."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.flink.assemble import join, unpack
from pipelines.telemetry import DeadLetter, parse_line
from schemas.arrow import METRICS
from tests.conftest import line, record
from tests.flink_data import BAD_LINES

if importlib.util.find_spec("pyflink") is None or not (shutil.which("javac") and shutil.which("java")):
    pytest.skip("needs apache-flink (its jars) and a JDK", allow_module_level=True)


@pytest.fixture(scope="module")
def java_parse():
    """lines -> one dict per line from the JVM parser (one JVM per call)."""
    from pipelines.flink import udf

    cp = os.pathsep.join([udf.jar_path(), *udf.classpath()])

    def run(lines: list[bytes], *args: str) -> list[dict]:
        assert all(b"\n" not in x for x in lines)
        out = subprocess.run(["java", "-cp", cp, udf.PARSE_MAIN, *args], input=b"\n".join(lines) + b"\n",
                             capture_output=True, check=True, timeout=120)
        got = [json.loads(x) for x in out.stdout.decode().split("\n")[:-1]]  # not splitlines: U+2028
        assert len(got) == len(lines) + len(args)
        return got

    return run


T0_MS = 1_767_225_600_000  # 2026-01-01T00:00Z, the window ParseMain joins


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def assert_same(raw: bytes, got: dict) -> None:
    """The JVM parser's answer on ``raw`` agrees with ``parse_line``: never looser, and the
    same values, bit for bit, when both accept."""
    want = parse_line(raw, "t", 1)
    if not got["ok"]:
        return
    assert not isinstance(want, DeadLetter), (raw, want)
    assert (got["tenant"], got["agent"]) == (want["tenant"], want["agent_id"])
    assert got["et_bits"] == _bits(want["event_time"]), raw
    assert got["et_ms"] == math.floor(want["event_time"] * 1000)
    assert got["metric_bits"] == [_bits(float(want[m])) for m in METRICS], raw
    w = unpack(*join([base64.b64decode(got["packed"])]))
    assert _bits(float(w.event_time[0])) == _bits(want["event_time"])
    assert [_bits(float(v)) for v in w.values[0]] == [_bits(float(want[m])) for m in METRICS]
    assert w.names[w.agent[0]] == want["agent_id"]
    assert [(w.names[d], *map(_bits, c)) for d, c in zip(w.dst.tolist(), w.call_values.tolist())] == \
        [(c["dst"], *(_bits(float(c[k])) for k in ("count", "errors", "latency_ms"))) for c in want["calls"]]


VALID = [
    line(record()),
    line(record(ts=1_767_225_601)),  # epoch seconds, integer
    line(record(ts=1_767_225_601.123456789)),  # epoch seconds, float
    line(record(ts="2026-01-01T00:00:01.1Z")),  # fractions of 1..6 digits
    line(record(ts="2026-01-01T00:00:01.12345Z")),
    line(record(ts="2026-01-01T00:00:01.123456+00:00")),
    line(record(ts="2026-01-01T05:30:01.5+05:30")),  # other offsets
    line(record(ts="2025-12-31T20:00:01-04:00")),
    line(record(ts="2024-02-29T23:59:59.999999Z")),  # leap day
    line(record(agent='quo"te \\ back ü 😀 \u0001', tenant="T.e_n-1")),
    line(record(schema_version=1, calls=[])),
    line(record(latency_p50_ms=0.1, latency_p99_ms=0.1, cpu=1, memory=0, error_rate=1e-300)),
    line(record(latency_p50_ms=3_600_000, latency_p99_ms=3_600_000.0, request_count=2**62)),
    line(record(calls=[{"dst": "x", "count": 0, "errors": 0, "latency_ms": 0},
                       {"latency_ms": 1.7976931348623157e-5, "dst": "y", "errors": 3, "count": 3}])),
    b'  {"tenant":"acme","agent_id":"a","ts":"2026-01-01T00:00:01Z","latency_p50_ms":1.5E1,'
    b'"latency_p99_ms":2.5e+1,"error_rate":-0.0,"request_count":-0,"cpu":0.1000000000000000055511151231257827,'
    b'"memory":5e-1,"queue_depth":0,"in_flight":7,"calls":[ {"dst":"b" , "count":1,"errors":0,'
    b'"latency_ms":0.30000000000000004} ] }\r',
]

INVALID = [
    *BAD_LINES,
    b'{"tenant":"acme"} trailing',
    line(record(tenant="acme\n")),  # the pattern's $ must not match before a newline
    line(record(tenant="-acme")),
    line(record(agent="")),
    line(record(agent="x" * 257)),
    line(record(ts="2026-01-01T00:00:01")),  # no offset
    line(record(ts="2026-02-30T00:00:01Z")),
    line(record(ts=-1)),
    line(record(ts=2.0**33)),
    line(record(latency_p50_ms=30.0, latency_p99_ms=20.0)),
    line(record(latency_p99_ms=3_600_000.5)),
    line(record(cpu=True)),
    line(record(cpu=1.0000000000000002)),
    line(record(request_count=-1)),
    line(record(queue_depth=1.5)),
    line(record(schema_version=2)),
    line(record(calls=[{"dst": "db", "count": 1, "errors": 0, "latency_ms": 1.0, "x": 1}])),
    line(record(calls=[{"dst": "db", "count": 1, "errors": 0}])),
    line(record(calls=[{"dst": "db", "count": 1, "errors": 0, "latency_ms": -1.0}])),
    line(record(calls={"dst": "db"})),
    line(record(calls=[{"dst": "", "count": 1, "errors": 0, "latency_ms": 1.0}])),
    line(record(calls=[{"dst": "db", "count": 1, "errors": 0, "latency_ms": 1.0}] * 10_001)),
    line(record()).replace(b'"cpu":0.4', b'"cpu":1e400'),  # overflows to infinity
    line(record(agent="a")).replace(b'"a"', b'"\\ud800"'),  # lone surrogate
    line(record(agent="a")).replace(b'"a"', b'"\xff"'),  # not UTF-8
    line(record(agent="a")).replace(b'"a"', b'"\xc0\x80"'),  # overlong UTF-8
    line(record(agent="a")).replace(b'"a"', b'"\xed\xa0\x80"'),  # UTF-8 of a surrogate
    b'{"tenant":"acme","agent_id":"a"',
    b"null",
]

# valid by the contract, but in a form the JVM parser leaves to Python (unsupported_by_flink_sql)
STRICTER = [
    line(record(ts="2026-01-01T00:00:01.1234567Z")),  # 7 fractional digits
    line(record(ts="2026-01-01 00:00:01Z")),
    line(record(request_count=100.0)),  # integral float for an integer field
    line(record()).replace(b'"request_count":100', b'"request_count":18446744073709551616'),
    line(record())[:-1] + b',"tenant":"other"}',  # repeated key (the last one wins in Python)
    line(record(schema_version=1.0)),
]


def test_valid_records_are_accepted_with_the_same_values(java_parse):
    got = java_parse(VALID)
    for raw, g in zip(VALID, got):
        assert not isinstance(parse_line(raw, "t", 1), DeadLetter), raw
        assert g["ok"], raw
        assert_same(raw, g)


def test_a_window_is_joined_on_the_jvm_as_assemble_joins_it(java_parse):
    *got, joined = java_parse(VALID + [b"{not json"], "join")
    packed = [base64.b64decode(g["packed"]) for g in got if g.get("ok")]
    assert len(packed) == len(VALID)
    heads, meta = base64.b64decode(joined["heads"]), base64.b64decode(joined["meta"])
    assert (joined["key"], joined["start"], joined["end"]) == ("t", T0_MS, T0_MS + 10_000)
    closed_ms = unpack(heads, meta).closed_ms
    assert abs(closed_ms / 1000 - time.time()) < 600
    assert (heads, meta[16:]) == (join(packed)[0], join(packed)[1][16:])
    packed += packed[:2]  # duplicates: their calls as written cross too
    *_, joined = java_parse(VALID + VALID[:2], "join")
    meta = base64.b64decode(joined["meta"])
    assert meta[16:] == join(packed)[1][16:]
    empty = java_parse([b""], "join")[1]
    assert (base64.b64decode(empty["heads"]), base64.b64decode(empty["meta"])[16:]) == \
        (b"", join([])[1][16:])  # an empty window


def test_invalid_records_are_rejected(java_parse):
    for raw, g in zip(INVALID, java_parse(INVALID)):
        assert isinstance(parse_line(raw, "t", 1), DeadLetter), raw
        assert not g["ok"], raw


def test_rare_valid_forms_are_left_to_python(java_parse):
    for raw, g in zip(STRICTER, java_parse(STRICTER)):
        assert not isinstance(parse_line(raw, "t", 1), DeadLetter), raw
        assert not g["ok"], raw


def test_blank_lines_are_not_records(java_parse):
    lines = [b" \t\r", b"\x0b\x0c ", b" x ", b"\xc2\xa0"]
    got = java_parse(lines)
    assert [("blank" in g) for g in got] == [not x.strip() for x in lines] == [True, True, False, False]


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
finite = st.floats(min_value=0, max_value=3_600_000, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0, max_value=1, allow_nan=False, allow_infinity=False)
counts = st.integers(0, 2**63 - 1)


@st.composite
def timestamps(draw):
    """Epoch numbers (int or float) or RFC 3339 strings in the supported forms."""
    t = draw(st.integers(86_400, 2**33 - 86_400))  # any offset keeps it in range
    kind = draw(st.sampled_from(["int", "float", "str"]))
    if kind == "int":
        return t
    if kind == "float":
        return t + draw(st.floats(0, 1, exclude_max=True))
    days, rest = divmod(t, 86400)
    from datetime import date

    d = date.fromordinal(date(1970, 1, 1).toordinal() + days)
    digits = draw(st.integers(0, 6))
    frac = "." + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits))) \
        if digits else ""
    off = draw(st.sampled_from(["Z", "+00:00", "-00:00", "+05:30", "-11:45", "+14:00"]))
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:"
            f"{rest % 60:02d}{frac}{off}")


@st.composite
def records(draw):
    p50 = draw(finite)
    calls = []
    for _ in range(draw(st.integers(0, 3))):
        count = draw(counts)
        calls.append({"dst": draw(names), "count": count, "errors": draw(st.integers(0, count)),
                      "latency_ms": draw(finite)})
    rec = {"tenant": draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,5}\Z")), "agent_id": draw(names),
           "ts": draw(timestamps()), "latency_p50_ms": p50,
           "latency_p99_ms": draw(st.floats(p50, 3_600_000, allow_nan=False)), "error_rate": draw(unit),
           "request_count": draw(counts), "cpu": draw(unit), "memory": draw(unit),
           "queue_depth": draw(counts), "in_flight": draw(counts), "calls": calls}
    if draw(st.booleans()):
        rec["schema_version"] = 1
    if draw(st.booleans()):  # random key order
        keys = draw(st.permutations(list(rec)))
        rec = {k: rec[k] for k in keys}
    return rec


def _mutate(raw: bytes, data) -> bytes:
    """A small corruption: drop, duplicate or replace one byte."""
    i = data.draw(st.integers(0, len(raw) - 1))
    how = data.draw(st.sampled_from(["drop", "dup", "set"]))
    if how == "drop":
        return raw[:i] + raw[i + 1:]
    if how == "dup":
        return raw[:i] + raw[i:i + 1] + raw[i:]
    return raw[:i] + bytes([data.draw(st.sampled_from(b'{}[],:"0.-e9 \\xu'))]) + raw[i + 1:]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recs=st.lists(records(), min_size=1, max_size=30), data=st.data())
def test_generated_records_agree_with_parse_line(java_parse, recs, data):
    lines = [orjson.dumps(r) if data.draw(st.booleans()) else json.dumps(r, ensure_ascii=False).encode()
             for r in recs]
    bad = [_mutate(x, data) for x in lines]
    bad = [x for x in bad if x.strip() and b"\n" not in x]
    got = java_parse(lines + bad)
    for raw, g in zip(lines, got):
        assert g["ok"], raw  # every generated record is in a supported form
        assert_same(raw, g)
    for raw, g in zip(bad, got[len(lines):]):
        assert_same(raw, g)  # mutated: accepted only if parse_line accepts it, with the same values
