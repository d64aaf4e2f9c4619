"""Structured logs: one JSON object per line, ready for Loki (or plain text for people).

Each line has ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``msg``, and
when known the window it is about: ``tenant``, ``window_start_ms``, ``stage``, ``trace_id``
and ``span_id`` - from ``extra={...}`` first, else from the ``pipelines.tracing.window_span``
being run (the trace id is the window's, ``tracing.trace_id_for``, whether tracing is on or
not), else from the current OpenTelemetry span. An exception adds ``exc``.

The format comes from ``configure_logging(fmt)``, else the ``AURA_LOG_FORMAT`` variable
(``json`` | ``text``). ``aura api`` logs JSON by default; the CLI's own output for people
(``aura run``'s summary table, progress) is printed, not logged, and stays text.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from datetime import UTC, datetime

import orjson
from opentelemetry import trace

from pipelines import tracing

FORMAT_ENV = "AURA_LOG_FORMAT"
FORMATS = ("json", "text")
SERVICE_LOGGER = "aura.service"
_OWN = ("aura", "pipelines")  # AURA's loggers (``configure_logging``'s level applies to these)
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_FIELDS = ("tenant", "window_start_ms", "stage", "trace_id", "span_id")
_DROPPED = frozenset({"window_ms", "color_message"})  # an alias (as window_start_ms); uvicorn's ANSI copy


def _rfc3339(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def window_fields(record: logging.LogRecord | None = None) -> dict:
    """Tenant, window (``window_start_ms``, or ``window_ms`` in ``extra``), stage, trace and
    span ids of a record's ``extra``, else of the work being run."""
    out = {}
    if record is not None:
        out = {k: v for k in _FIELDS if (v := getattr(record, k, None)) is not None}
        if "window_start_ms" not in out and getattr(record, "window_ms", None) is not None:
            out["window_start_ms"] = record.window_ms
    w = tracing.current_window()
    if w is not None and "tenant" not in out:
        out.update(tenant=w.tenant, window_start_ms=w.window_ms, stage=w.stage)
    if "trace_id" not in out and "tenant" in out and "window_start_ms" in out:
        out["trace_id"] = tracing.trace_id_for(out["tenant"], int(out["window_start_ms"]))
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:  # a span being run: its ids, unless the record is about another window
        trace_id = f"{ctx.trace_id:032x}"
        if out.setdefault("trace_id", trace_id) == trace_id:
            out.setdefault("span_id", f"{ctx.span_id:016x}")
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module doc); other ``extra`` keys are kept too."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _rfc3339(record.created), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        doc.update(window_fields(record))
        for k, v in record.__dict__.items():
            if k not in _RESERVED and k not in doc and k not in _DROPPED and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return orjson.dumps(doc, default=str).decode()


class _Handler(logging.StreamHandler):
    """The handler ``configure_logging`` installs (replaced, not stacked, when called again);
    without a stream of its own it writes to whatever ``sys.stderr`` is at the time."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow:
            self.stream = sys.stderr
        super().emit(record)


def log_format(fmt: str | None = None, default: str = "text") -> str:
    """``fmt``, else ``$AURA_LOG_FORMAT``, else ``default``; checked."""
    chosen = (fmt or os.environ.get(FORMAT_ENV) or default).lower()
    if chosen not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {chosen!r}")
    return chosen


def configure_logging(fmt: str | None = None, level: int | str = logging.INFO, stream=None) -> str:
    """Send every log record to ``stream`` (stderr) as JSON lines or as text (the message
    only, as the service printed it); AURA's own loggers (``aura.*``, ``pipelines.*``) at
    ``level``, others as they were. Replaces a plain stderr handler (``logging.basicConfig``'s)
    and its own earlier one. The format chosen."""
    chosen = log_format(fmt)
    root = logging.getLogger()
    for h in list(root.handlers):
        plain = type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout)
        if plain or isinstance(h, _Handler):
            root.removeHandler(h)
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter("%(message)s"))
    root.addHandler(handler)
    for name in _OWN:
        logging.getLogger(name).setLevel(level)
    if chosen == "json":  # nothing else on stderr: warnings and threads' uncaught errors as records too
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").setLevel(logging.WARNING)  # shown, as they were when printed
        threading.excepthook = _log_thread_exception
    return chosen


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("aura.threads").error(f"uncaught exception in thread {name}",
                                            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def service_log(message: str) -> None:
    """The service's ``log=`` callback: ``message`` at INFO on ``aura.service`` (configured
    with ``configure_logging`` first, else as ``$AURA_LOG_FORMAT`` / text on stderr)."""
    logger = logging.getLogger(SERVICE_LOGGER)
    if not any(isinstance(h, _Handler) for h in logging.getLogger().handlers):
        configure_logging()
    logger.info(message)
