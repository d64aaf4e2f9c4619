"""Flink SQL of the Flink job: the landing-directory source, JVM-side parsing and validation,
the lateness split and one event-time window aggregate per (tenant, window).

Parsing and validation on the JVM, once per line: the table function ``parse_telemetry``
(``pipelines/flink/java``, ``TelemetryParser``) implements the telemetry contract
(``schemas/telemetry.v1.json``) with one Jackson pass and returns ``ok``, the tenant, the
event time in ms and the record packed as bytes. A row that
fails (``ok = FALSE``) goes to Python, where the contract's validator
(``pipelines.telemetry.parse_line``) names the reason. The parser is stricter than the
contract only for rare valid forms (integers beyond 64 bits, integral floats for integer
fields, RFC 3339 forms other than ``YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)``, duplicate keys,
``schema_version`` other than the integer 1):
those become dead letters with reason ``unsupported_by_flink_sql``, never silently dropped.

The window aggregate collects the packed records of a (tenant, window) into one array, so
Python gets one row per (tenant, window) (joined on the JVM, ``WindowRows``) and decodes it
with numpy (``pipelines.flink.assemble.window_snapshot``).
"""

from __future__ import annotations

from dataclasses import dataclass

PARSE = "parse_telemetry"

def _q(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


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

    @property
    def watermark_lag(self) -> str:
        """Bounded (no monitoring): the files are read in no particular order (splits go to
        readers as they ask), so the input is one event-time batch - the watermark trails by
        99 days and windows fire at the end of the input. Continuous: it trails by the
        out-of-orderness."""
        if self.monitor_interval_s is None:
            return "INTERVAL '99' DAY"
        return _interval(int(round(self.out_of_orderness_s * 1000)))


def function_ddl(class_name: str) -> str:
    return f"CREATE TEMPORARY FUNCTION {PARSE} AS {_q(class_name)} LANGUAGE JAVA"


def source_ddl(spec: SqlSpec) -> str:
    """The landing directory as a table of raw lines, as bytes (as Beam reads them; no
    decoding on the JVM) and without event time yet: it comes from the parse, and the
    watermark is declared on the parsed stream (``parse_query``)."""
    opts = {"connector": "filesystem", "path": spec.path, "format": "raw"}
    if spec.monitor_interval_s is not None:
        opts["source.monitor-interval"] = f"{int(round(spec.monitor_interval_s * 1000))} ms"
    with_ = ", ".join(f"{_q(k)} = {_q(v)}" for k, v in opts.items())
    return f"""
CREATE TEMPORARY TABLE landing (
  line BYTES,
  path STRING METADATA FROM 'file.path' VIRTUAL
) WITH ({with_})"""


def parse_query() -> str:
    """Every line but blank ones (no row from the parser), parsed once: the raw line, its
    file, the parser's columns and ``rowtime``, the event time the watermark is declared on
    (a row that failed the parse gets 0, so it never moves the watermark). Computed here, so
    that declaring the watermark needs no projection that copies every row."""
    return f"""
SELECT l.line, l.path, p.ok, p.tenant, p.et_ms, p.rec, TO_TIMESTAMP_LTZ(COALESCE(p.et_ms, 0), 3) AS rowtime
FROM landing AS l, LATERAL TABLE({PARSE}(l.line)) AS p"""


def lateness_view(spec: SqlSpec, table: str) -> str:
    """``parsed``: the parsed rows plus ``late`` (every window of the row has fired already:
    the window operator would drop it, so it becomes a dead letter instead)."""
    slice_end = f"(et_ms - MOD(et_ms, {spec.slide_ms}) + {spec.slide_ms})"
    return f"""
CREATE TEMPORARY VIEW parsed AS
SELECT *, ok AND COALESCE(TO_TIMESTAMP_LTZ({slice_end} - 1, 3) <= CURRENT_WATERMARK(rowtime), FALSE) AS late
FROM {table}"""


def valid_view() -> str:
    return "CREATE TEMPORARY VIEW valid AS SELECT * FROM parsed WHERE ok AND NOT late"


def _interval(ms: int) -> str:
    return f"INTERVAL '{ms // 1000}.{ms % 1000:03d}' SECOND"


def combined_query(spec: SqlSpec) -> str:
    """One query, so the landing directory is read once and every row sees one watermark:
    ``w`` rows per (tenant, window) - the packed records (in no particular order;
    Python sorts and removes duplicates as ``build_snapshot`` does); ``d`` rows that are not
    windowed - invalid (reason named in Python) or late."""
    hop = (f"TABLE(HOP(TABLE valid, DESCRIPTOR(rowtime), {_interval(spec.slide_ms)}, "
           f"{_interval(spec.size_ms)}))")
    return f"""
SELECT 'w' AS kind, tenant, window_start, window_end, ARRAY_AGG(rec) AS recs,
  CAST(NULL AS BYTES) AS line, CAST(NULL AS STRING) AS path, CAST(NULL AS BOOLEAN) AS late
FROM {hop}
GROUP BY tenant, window_start, window_end
UNION ALL
SELECT 'd' AS kind, '-' AS tenant, CAST(NULL AS TIMESTAMP(3)) AS window_start,
  CAST(NULL AS TIMESTAMP(3)) AS window_end, CAST(NULL AS ARRAY<BYTES>) AS recs, line, path, late
FROM parsed WHERE NOT ok OR late"""
