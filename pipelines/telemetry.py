"""Parse and validate telemetry records from NDJSON lines and Parquet rows.

Every input record ends as exactly one of: a parsed record (a dict with the contract's
fields plus ``event_time``, epoch seconds) or a ``DeadLetter`` with the original bytes, a
reason code, a readable detail and its source position. Nothing raises on bad input.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import fastjsonschema
import orjson
import pyarrow.parquet as pq

from schemas import TELEMETRY_JSON_SCHEMA

# Reason codes of the dead-letter output.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
INVALID_VALUE = "invalid_value"
INCONSISTENT = "inconsistent"
BAD_TIMESTAMP = "bad_timestamp"
TIMESTAMP_TOO_FAR = "timestamp_too_far_from_watermark"
LATE = "late"
UNREADABLE_FILE = "unreadable_file"

MAX_EPOCH_S = 2.0**33  # about the year 2242

_RULE_REASON = {
    "required": MISSING_FIELD,
    "additionalProperties": UNKNOWN_FIELD,
    "type": WRONG_TYPE,
    "minimum": OUT_OF_RANGE,
    "maximum": OUT_OF_RANGE,
    "exclusiveMinimum": OUT_OF_RANGE,
    "exclusiveMaximum": OUT_OF_RANGE,
    "maxItems": OUT_OF_RANGE,
}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed, with why and where it came from."""

    reason: str
    detail: str
    source: str
    position: int  # 1-based line number (NDJSON) or 0-based row index (Parquet)
    raw: bytes

    def to_dict(self) -> dict:
        """JSON-ready form: the original bytes as text, or base64 when they are not UTF-8."""
        out = {"reason": self.reason, "detail": self.detail, "source": self.source,
               "position": self.position}
        try:
            out["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            out["raw_base64"] = base64.b64encode(self.raw).decode("ascii")
        return out


@lru_cache(maxsize=1)
def _validator():
    schema = orjson.loads(TELEMETRY_JSON_SCHEMA.read_bytes())
    return fastjsonschema.compile(schema)


def _schema_reason(err: fastjsonschema.JsonSchemaValueException) -> tuple[str, str]:
    if err.name == "data.ts":
        return (WRONG_TYPE if err.rule == "type" else BAD_TIMESTAMP,
                "data.ts must be an RFC 3339 string or non-negative epoch seconds")
    return _RULE_REASON.get(err.rule, INVALID_VALUE), err.message


def parse_timestamp(value: str | float | int) -> float:
    """Epoch seconds from an RFC 3339 string with offset or from epoch seconds.

    Raises ValueError with a readable message when the value is not a usable timestamp.
    """
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no UTC offset")
        t = dt.timestamp()
    else:
        t = float(value)
    if not 0.0 <= t < MAX_EPOCH_S:
        raise ValueError(f"timestamp {value!r} is not an epoch time between 1970 and 2242")
    return t


def validate(obj: object) -> tuple[dict | None, str, str]:
    """Check one decoded record against the contract: (record, "", "") or (None, reason, detail)."""
    if not isinstance(obj, dict):
        return None, NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
    try:
        _validator()(obj)
    except fastjsonschema.JsonSchemaValueException as err:
        return (None, *_schema_reason(err))
    for name in ("latency_p50_ms", "latency_p99_ms", "error_rate", "cpu", "memory"):
        if not math.isfinite(obj[name]):  # NaN passes no range check in JSON Schema either
            return None, OUT_OF_RANGE, f"data.{name} must be finite"
    if obj["latency_p99_ms"] < obj["latency_p50_ms"]:
        return None, INCONSISTENT, "data.latency_p99_ms must be >= data.latency_p50_ms"
    for i, call in enumerate(obj["calls"]):
        if call["errors"] > call["count"]:
            return None, INCONSISTENT, f"data.calls[{i}].errors must be <= count"
        if not math.isfinite(call["latency_ms"]):
            return None, OUT_OF_RANGE, f"data.calls[{i}].latency_ms must be finite"
    try:
        obj["event_time"] = parse_timestamp(obj["ts"])
    except (ValueError, OverflowError, OSError) as err:
        return None, BAD_TIMESTAMP, str(err)
    return obj, "", ""


@dataclass
class TimestampGuard:
    """Rejects timestamps absurdly far from the stream's watermark.

    The reference is the watermark once there is one, else the median event time of the
    batch being parsed (robust to a few absurd values in the first batch).
    """

    max_ahead_s: float = 3600.0
    max_behind_s: float = 86400.0
    watermark: float | None = None

    def check(self, records: list[tuple[dict, bytes, int]], source: str
              ) -> tuple[list[tuple[dict, bytes, int]], list[DeadLetter]]:
        """Split parsed (record, raw, position) triples into accepted and dead letters."""
        if not records:
            return [], []
        ref = self.watermark
        if ref is None:
            times = sorted(r["event_time"] for r, _, _ in records)
            ref = times[len(times) // 2]
        ok, dead = [], []
        for rec, raw, pos in records:
            t = rec["event_time"]
            if t > ref + self.max_ahead_s or t < ref - self.max_behind_s:
                dead.append(DeadLetter(TIMESTAMP_TOO_FAR, f"event time {t:.3f} is {t - ref:+.0f} s "
                                       f"from the reference {ref:.3f}", source, pos, raw))
            else:
                ok.append((rec, raw, pos))
        return ok, dead


def parse_line(raw: bytes, source: str, position: int) -> dict | DeadLetter:
    """One NDJSON line -> record or dead letter (no watermark check)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return DeadLetter(MALFORMED_JSON, str(err), source, position, raw)
    rec, reason, detail = validate(obj)
    if rec is None:
        return DeadLetter(reason, detail, source, position, raw)
    return rec


@dataclass
class ParseResult:
    """Outcome of parsing one batch: ``n_read == len(records) + len(dead)``."""

    records: list[dict]
    dead: list[DeadLetter]
    n_read: int
    origins: list[tuple[bytes, int]]  # (raw bytes, position) of each record, same order


def _finish(good: list[tuple[dict, bytes, int]], dead: list[DeadLetter], n_read: int,
            source: str, guard: TimestampGuard | None) -> ParseResult:
    if guard is not None:
        good, far = guard.check(good, source)
        dead = dead + far
    return ParseResult([r for r, _, _ in good], dead, n_read, [(raw, pos) for _, raw, pos in good])


def parse_lines(lines: Iterable[bytes], source: str, guard: TimestampGuard | None = None,
                first_position: int = 1) -> ParseResult:
    """Parse a batch of NDJSON lines (blank lines are skipped, not counted as records)."""
    good: list[tuple[dict, bytes, int]] = []
    dead: list[DeadLetter] = []
    n_read = 0
    for pos, raw in enumerate(lines, start=first_position):
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        n_read += 1
        out = parse_line(raw, source, pos)
        if isinstance(out, DeadLetter):
            dead.append(out)
        else:
            good.append((out, raw, pos))
    return _finish(good, dead, n_read, source, guard)


def read_parquet_rows(path: str) -> Iterator[tuple[int, dict, bytes]]:
    """(row index, row dict, row as JSON bytes) for every row of a telemetry Parquet file."""
    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist()):
        if isinstance(row.get("ts"), datetime):
            row["ts"] = row["ts"].isoformat()
        yield i, row, orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_parquet(path: str, guard: TimestampGuard | None = None) -> ParseResult:
    """Parse a Parquet file of telemetry; bad rows become dead letters (raw = row as JSON).
    A file that cannot be read at all counts as one record, dead-lettered."""
    good: list[tuple[dict, bytes, int]] = []
    dead: list[DeadLetter] = []
    try:
        rows = list(read_parquet_rows(path))
    except Exception as err:  # noqa: BLE001 - an unreadable file is one dead letter
        return ParseResult([], [DeadLetter(UNREADABLE_FILE, f"unreadable Parquet file: {err}",
                                           path, -1, b"")], 1, [])
    for i, row, raw in rows:
        rec, reason, detail = validate(row)
        if rec is None:
            dead.append(DeadLetter(reason, detail, path, i, raw))
        else:
            good.append((rec, raw, i))
    return _finish(good, dead, len(rows), path, guard)


def parse_file(path: str, guard: TimestampGuard | None = None) -> ParseResult:
    """Parse a telemetry file by its extension (.parquet, else NDJSON)."""
    if path.endswith(".parquet"):
        return parse_parquet(path, guard)
    with open(path, "rb") as fh:
        return parse_lines(fh, path, guard)
