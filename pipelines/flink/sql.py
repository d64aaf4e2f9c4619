"""Flink SQL of the Flink job: the landing-directory source, JVM-side JSON parsing and
validation, the lateness split, and per-agent and per-edge event-time window aggregates.

Validation on the JVM: ``JSON_QUERY(line, '$')`` re-serialises a record canonically (keys
sorted, no blanks), so one regular expression checks the exact key set and the JSON types
of the telemetry contract (``schemas/telemetry.v1.json``); ranges and cross-field rules are
SQL predicates. A row that fails (``ok = FALSE``) goes to Python, where the contract's
validator (``pipelines.telemetry.parse_line``) names the reason. The fast path is stricter
than the contract only for unusual but valid forms (non-UTC offsets, 1, 2, 4, 5 fractional
digits, escaped characters in names, integral floats for integer fields): those become dead
letters with reason ``unsupported_by_flink_sql``, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

NUM = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"
INT = r"[0-9]+"
STR = r'"[^"\\\\]{1,256}"'
TENANT = r'"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"'
TS_STR = r'"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3}|\.[0-9]{6})?(Z|\+00:00)"'
CALL = r'\{"count":' + INT + r',"dst":' + STR + r',"errors":' + INT + r',"latency_ms":' + NUM + r"\}"
CALLS = r"\[(" + CALL + r"(," + CALL + r")*)?\]"
RECORD = ("^\\{" + ",".join([
    f'"agent_id":{STR}', f'"calls":{CALLS}', f'"cpu":{NUM}', f'"error_rate":{NUM}', f'"in_flight":{INT}',
    f'"latency_p50_ms":{NUM}', f'"latency_p99_ms":{NUM}', f'"memory":{NUM}', f'"queue_depth":{INT}',
    f'"request_count":{INT}']) + f',("schema_version":1,)?"tenant":{TENANT},"ts":({TS_STR}|{NUM})' + "\\}$")
BAD_CALLS = "lax $.calls[?(@.errors > @.count || @.latency_ms < 0 || @.latency_ms > 3600000)]"
MAX_EPOCH_S = 2.0 ** 33

METRIC_COLS = ("latency_p50_ms", "latency_p99_ms", "error_rate", "request_count", "cpu", "memory",
               "queue_depth", "in_flight")


def _q(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def _num(field: str) -> str:
    return f"TRY_CAST(JSON_VALUE(line, '$.{field}') AS DOUBLE)"


def _event_time() -> str:
    """Event time in epoch seconds (DOUBLE), bit-identical to ``parse_timestamp``: numbers as
    written, RFC 3339 strings through integer microseconds."""
    ts = "JSON_VALUE(line, '$.ts')"
    secs = f"UNIX_TIMESTAMP(SUBSTRING({ts}, 1, 19), 'yyyy-MM-dd''T''HH:mm:ss')"
    frac = f"COALESCE(TRY_CAST(RPAD(REGEXP_EXTRACT({ts}, '\\.([0-9]+)', 1), 6, '0') AS BIGINT), 0)"
    return (f"(CASE WHEN SUBSTRING(JSON_QUERY(line, '$.ts' WITH WRAPPER), 2, 1) = '\"' "
            f"THEN CAST({secs} * 1000000 + {frac} AS DOUBLE) / CAST(1000000 AS DOUBLE) "
            f"ELSE TRY_CAST({ts} AS DOUBLE) END)")


def _ok() -> str:
    """TRUE when a line is a record the contract accepts (module doc)."""
    et = _event_time()
    rules = [f"REGEXP(JSON_QUERY(line, '$'), {_q(RECORD)})",
             f"{et} >= 0", f"{et} < {MAX_EPOCH_S!r}",
             f"{_num('latency_p50_ms')} <= 3600000", f"{_num('latency_p99_ms')} <= 3600000",
             f"{_num('latency_p50_ms')} >= 0", f"{_num('latency_p99_ms')} >= {_num('latency_p50_ms')}",
             *[f"{_num(f)} BETWEEN 0 AND 1" for f in ("error_rate", "cpu", "memory")],
             f"JSON_QUERY(line, {_q(BAD_CALLS)} WITH WRAPPER) = '[[]]'"]
    return "COALESCE(" + " AND ".join(f"({r})" for r in rules) + ", FALSE)"


@dataclass(frozen=True)
class SqlSpec:
    """What the SQL needs: where the files are, the windows and the watermark (seconds)."""

    path: str
    size_s: float
    slide_s: float
    out_of_orderness_s: float
    monitor_interval_s: float | None = None  # None: read what is there, then end (bounded)

    @property
    def size_ms(self) -> int:
        return int(round(self.size_s * 1000))

    @property
    def slide_ms(self) -> int:
        return int(round(self.slide_s * 1000))


def source_ddl(spec: SqlSpec) -> str:
    """The landing directory as a table of raw lines with an event-time watermark. The event
    time comes from ``ts`` alone (not the whole validation: it would run twice per row); a
    row without a usable ``ts`` gets 0, so it never moves the watermark.

    Bounded (no monitoring): the files are read in no particular order (splits go to readers
    as they ask), so the input is one event-time batch - the watermark trails by 99 days and
    windows fire at the end of the input. Continuous: it trails by the out-of-orderness."""
    et_ms = f"CAST(FLOOR({_event_time()} * 1000) AS BIGINT)"
    lag = (_interval(int(round(spec.out_of_orderness_s * 1000))) if spec.monitor_interval_s is not None
           else "INTERVAL '99' DAY")
    opts = {"connector": "filesystem", "path": spec.path, "format": "raw", "raw.charset": "UTF-8"}
    if spec.monitor_interval_s is not None:
        opts["source.monitor-interval"] = f"{int(round(spec.monitor_interval_s * 1000))} ms"
    with_ = ", ".join(f"{_q(k)} = {_q(v)}" for k, v in opts.items())
    return f"""
CREATE TEMPORARY TABLE landing (
  line STRING,
  path STRING METADATA FROM 'file.path' VIRTUAL,
  rowtime AS TO_TIMESTAMP_LTZ(COALESCE(CASE WHEN {_event_time()} >= 0 AND {_event_time()} < {MAX_EPOCH_S!r}
    THEN {et_ms} END, 0), 3),
  WATERMARK FOR rowtime AS rowtime - {lag}
) WITH ({with_})"""


def parsed_query(spec: SqlSpec) -> str:
    """Typed columns, ``ok`` and ``late`` (every window of the row has fired already: the
    window operator would drop it, so it becomes a dead letter instead)."""
    et_ms = f"CAST(FLOOR({_event_time()} * 1000) AS BIGINT)"
    slice_end = f"({et_ms} - MOD({et_ms}, {spec.slide_ms}) + {spec.slide_ms})"
    metrics = ",\n  ".join(f"{_num(m)} AS {m}" for m in METRIC_COLS)
    return f"""
SELECT line, path, rowtime AS source_time, {_ok()} AS ok,
  {_ok()} AND COALESCE(TO_TIMESTAMP_LTZ({slice_end} - 1, 3) <= CURRENT_WATERMARK(rowtime), FALSE) AS late,
  JSON_VALUE(line, '$.tenant') AS tenant, JSON_VALUE(line, '$.agent_id') AS agent,
  {_event_time()} AS et,
  {metrics},
  JSON_QUERY(line, '$.calls') AS calls
FROM landing WHERE CHAR_LENGTH(TRIM(line)) > 0"""


def _interval(ms: int) -> str:
    return f"INTERVAL '{ms // 1000}.{ms % 1000:03d}' SECOND"


def _hop(spec: SqlSpec, table: str) -> str:
    return (f"TABLE(HOP(TABLE {table}, DESCRIPTOR(rowtime), {_interval(spec.slide_ms)}, "
            f"{_interval(spec.size_ms)}))")


def valid_view() -> str:
    return "CREATE TEMPORARY VIEW valid AS SELECT * FROM parsed WHERE ok AND NOT late"


_NULL = {"agent": "STRING", "dst": "STRING", "n": "BIGINT", "et": "ARRAY<DOUBLE NOT NULL>",
         **{m: "ARRAY<DOUBLE NOT NULL>" for m in METRIC_COLS}, "calls": "ARRAY<STRING NOT NULL>",
         "cnt": "BIGINT",
         "err": "BIGINT", "lat_w": "DOUBLE", "lat_sum": "DOUBLE", "line": "STRING", "path": "STRING",
         "late": "BOOLEAN", "window_start": "TIMESTAMP(3)", "window_end": "TIMESTAMP(3)"}
COLUMNS = ("kind", "tenant", "window_start", "window_end", "ts", "agent", "dst", "n", "et", *METRIC_COLS,
           "calls", "cnt", "err", "lat_w", "lat_sum", "line", "path", "late")


def _select(kind: str, given: dict[str, str]) -> str:
    cols = [f"'{kind}' AS kind"]
    for c in COLUMNS[1:]:
        cols.append(f"{given[c]} AS {c}" if c in given else f"CAST(NULL AS {_NULL[c]}) AS {c}")
    return "SELECT " + ", ".join(cols)


def combined_query(spec: SqlSpec) -> str:
    """One query, so the landing directory is read once and every row sees one watermark:
    ``a`` rows per (tenant, agent, window) - record count and every sample (arrays in no
    particular order; Python sorts and removes duplicates as ``build_snapshot`` does);
    ``e`` rows per (tenant, caller, callee, window) - call sums, latency weighted by count;
    ``d`` rows that are not windowed - invalid (reason named in Python) or late."""
    win = {"tenant": "tenant", "window_start": "window_start", "window_end": "window_end",
           "ts": "window_time"}
    agent = {**win, "agent": "agent", "n": "COUNT(*)", "et": "ARRAY_AGG(et)",
             **{m: f"ARRAY_AGG({m})" for m in METRIC_COLS}, "calls": "ARRAY_AGG(calls)"}
    edge = {**win, "agent": "agent", "dst": "dst", "n": "COUNT(*)", "cnt": "SUM(cnt)", "err": "SUM(err)",
            "lat_w": "SUM(cnt * lat)", "lat_sum": "SUM(lat)"}
    dead = {"tenant": "'-'", "ts": "rowtime", "line": "line", "path": "path", "late": "late"}
    group = "GROUP BY tenant, agent, window_start, window_end, window_time"
    return f"""
{_select('a', agent)} FROM {_hop(spec, 'valid')} {group}
UNION ALL
{_select('e', edge)} FROM {_hop(spec, 'calls_flat')} {group}, dst
UNION ALL
{_select('d', dead)} FROM parsed WHERE NOT ok OR late"""


def calls_view() -> str:
    return """
CREATE TEMPORARY VIEW calls_flat AS
SELECT v.tenant, v.agent, v.rowtime, JSON_VALUE(c.js, '$.dst') AS dst,
  CAST(JSON_VALUE(c.js, '$.count') AS BIGINT) AS cnt,
  CAST(JSON_VALUE(c.js, '$.errors') AS BIGINT) AS err,
  CAST(JSON_VALUE(c.js, '$.latency_ms') AS DOUBLE) AS lat
FROM valid AS v CROSS JOIN UNNEST(JSON_QUERY(v.line, '$.calls' RETURNING ARRAY<STRING>)) AS c(js)"""
