"""Structured logs (``pipelines.logs``): one JSON object per line with the window it is about
(tenant, window start, trace and span ids), and ``aura api``'s log in that format."""

from __future__ import annotations

import io
import logging
import threading
import warnings
from datetime import datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipelines import logs, tracing
from pipelines.service.launch import ApiProcess

W = 1_767_225_600_000


@pytest.fixture
def stream(monkeypatch):
    """JSON logs into a buffer; logging, warnings and the thread hook restored after."""
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    root = logging.getLogger()
    handlers, hook = list(root.handlers), threading.excepthook
    levels = {n: logging.getLogger(n).level for n in ("aura", "pipelines", "py.warnings")}
    buf = io.StringIO()
    assert logs.configure_logging("json", stream=buf) == "json"
    yield buf
    root.handlers[:] = handlers
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)
    logging.captureWarnings(False)
    threading.excepthook = hook
    tracing.shutdown()


def _lines(buf: io.StringIO) -> list[dict]:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return [orjson.loads(x) for x in text.splitlines()]


def test_one_json_object_per_line_with_the_envelope(stream):
    log = logging.getLogger("aura.test")
    log.info("hello %s", "world")
    log.debug("not at INFO")
    logging.getLogger("pipelines.x").warning("careful", extra={"rows": 3})
    (a, b) = _lines(stream)
    assert {k: a[k] for k in ("level", "logger", "msg")} == {"level": "info", "logger": "aura.test",
                                                            "msg": "hello world"}
    assert a["ts"].endswith("Z") and datetime.fromisoformat(a["ts"]).utcoffset().total_seconds() == 0
    assert "tenant" not in a and "trace_id" not in a  # no window: no window fields
    assert (b["level"], b["rows"]) == ("warning", 3)


def test_inside_a_window_span_lines_carry_tenant_window_and_trace(stream):
    log = logging.getLogger("aura.test")
    with tracing.window_span("features", "acme", W):  # tracing off: the window's ids all the same
        log.info("off")
    log.info("explicit", extra={"tenant": "beta", "window_ms": W + 10_000})
    assert tracing.configure("aura-test", exporter=InMemorySpanExporter())
    with tracing.window_span("predict", "acme", W) as span:
        log.info("on")
    off, explicit, on = _lines(stream)
    assert (off["tenant"], off["window_start_ms"], off["stage"]) == ("acme", W, "features")
    assert off["trace_id"] == tracing.trace_id_for("acme", W) and "span_id" not in off
    assert (explicit["tenant"], explicit["window_start_ms"]) == ("beta", W + 10_000)
    assert explicit["trace_id"] == tracing.trace_id_for("beta", W + 10_000)
    assert on["trace_id"] == tracing.trace_id_for("acme", W) == f"{span.get_span_context().trace_id:032x}"
    assert on["span_id"] == f"{span.get_span_context().span_id:016x}" and on["stage"] == "predict"


def test_errors_warnings_and_thread_crashes_are_records_too(stream):
    log = logging.getLogger("aura.test")
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    t = threading.Thread(target=lambda: 1 / 0, name="worker-1")
    t.start()
    t.join()
    failed, warned, crashed = _lines(stream)
    assert failed["level"] == "error" and "KeyError: 'k'" in failed["exc"]
    assert warned["logger"] == "py.warnings" and "old API" in warned["msg"]
    assert crashed["msg"] == "uncaught exception in thread worker-1" and "ZeroDivisionError" in crashed["exc"]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(min_size=1, max_size=30), st.integers(0, 2**53))
def test_any_message_is_one_line_that_parses_back(msg, tenant, window_ms):
    record = logging.LogRecord("aura.test", logging.INFO, __file__, 1, msg, None, None)
    record.tenant, record.window_ms = tenant, window_ms
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    doc = orjson.loads(line)
    assert (doc["msg"], doc["tenant"], doc["window_start_ms"]) == (msg, tenant, window_ms)
    assert doc["trace_id"] == tracing.trace_id_for(tenant, window_ms)


def test_format_choice(monkeypatch):
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    assert logs.log_format() == "text" and logs.log_format(default="json") == "json"
    monkeypatch.setenv(logs.FORMAT_ENV, "JSON")
    assert logs.log_format() == "json" and logs.log_format("text") == "text"
    with pytest.raises(ValueError, match="json, text"):
        logs.log_format("yaml")


def _service_log(tmp_path, *args: str) -> list[str]:
    """``aura api`` (ingest only) started and stopped; its log's lines."""
    api = ApiProcess(str(tmp_path / "svc"), ("--no-job", "--no-graph", *args)).start()
    assert api.stop() == 0
    with open(api.log_path) as fh:
        return [x for x in fh.read().splitlines() if x.strip()]


def test_the_service_logs_json_lines(tmp_path):
    lines = _service_log(tmp_path)
    docs = [orjson.loads(x) for x in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    msgs = [d["msg"] for d in docs]
    assert msgs[0].startswith("aura api on http://127.0.0.1:")  # the texts stay what they were
    assert any(m.startswith("aura api: spool worker pid ") for m in msgs)
    assert {d["logger"] for d in docs if d["msg"].startswith("aura api")} == {logs.SERVICE_LOGGER}


def test_the_service_logs_text_when_asked(tmp_path):
    lines = _service_log(tmp_path, "--log-format", "text")
    assert lines[0].startswith("aura api on http://127.0.0.1:")  # as it printed before
    assert any(x.startswith("aura api: spool worker pid ") for x in lines)
    assert not any(x.startswith("{") for x in lines)
