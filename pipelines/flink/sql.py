"""Flink SQL of the Flink job: the landing-directory source and JVM-side parsing and
validation. Windowing is not SQL: the parsed rows go on as a DataStream to a keyed Java
operator (``TenantWindower``, ``pipelines.flink.job``), so each tenant has its own watermark.

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
"""

from __future__ import annotations

from dataclasses import dataclass

PARSE = "parse_telemetry"


def _q(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class SqlSpec:
    """What the SQL needs: where the files are and how often to look for new ones (seconds)."""

    path: str
    monitor_interval_s: float | None = None  # None: read what is there, then end (bounded)


def function_ddl(class_name: str) -> str:
    return f"CREATE TEMPORARY FUNCTION {PARSE} AS {_q(class_name)} LANGUAGE JAVA"


def source_ddl(spec: SqlSpec) -> str:
    """The landing directory as a table of raw lines, as bytes (as Beam reads them; no
    decoding on the JVM) and without event time: it comes from the parse (``parse_query``)."""
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
    file and the parser's columns (``ok``, ``tenant``, ``et_ms``, ``rec``)."""
    return f"""
SELECT l.line, l.path, p.ok, p.tenant, p.et_ms, p.rec
FROM landing AS l, LATERAL TABLE({PARSE}(l.line)) AS p"""
