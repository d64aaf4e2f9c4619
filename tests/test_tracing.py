"""Traces of AURA itself (``pipelines.tracing``): one trace per (tenant, window), whose id any
process derives alone; a span per stage under the window's root; off (and nearly free) unless
an OTLP endpoint is configured; exported over OTLP/HTTP by the real SDK exporter to a real
receiver, from a real streaming job and from the job ``aura api`` starts."""

from __future__ import annotations

import collections
import glob
import os
import re
import subprocess
import sys
import time
import timeit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pipelines import tracing
from pipelines.cli import main
from pipelines.service.launch import ApiProcess
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = 1_767_225_600_000  # 2026-01-01T00:00:00Z, ms
STAGES = {"parse", "window", "features", "predict", "consensus", "sinks"}
OTEL_VARS = (tracing.TRACES_ENV, tracing.BASE_ENV)


@pytest.fixture(autouse=True)
def tracing_off(monkeypatch):
    """Every test starts with tracing off and no OTLP endpoint in the environment."""
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    tracing.shutdown()
    yield
    tracing.shutdown()


@pytest.fixture
def memory() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    assert tracing.configure("aura-test", exporter=exporter)
    return exporter


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


# -- ids -------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40), st.integers(0, 2**53), st.text(min_size=1, max_size=40),
       st.integers(0, 2**53))
def test_trace_ids_are_deterministic_hex_and_distinct_per_window(t1, w1, t2, w2):
    a = tracing.trace_id_for(t1, w1)
    assert a == tracing.trace_id_for(t1, w1) and re.fullmatch(r"[0-9a-f]{32}", a) and int(a, 16)
    root = tracing.root_span_id_for(t1, w1)
    assert re.fullmatch(r"[0-9a-f]{16}", root) and int(root, 16)
    if (t1, w1) != (t2, w2):
        assert tracing.trace_id_for(t2, w2) != a
        assert tracing.root_span_id_for(t2, w2) != root


# -- off -------------------------------------------------------------------------------------
def test_off_by_default_no_provider_no_spans_and_nearly_free():
    assert not tracing.configure("aura-test")  # no endpoint given, none in the environment
    assert not tracing.enabled() and tracing.endpoint() is None
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing installed globally
    with tracing.window_span("features", "acme", W, rows=3) as span:
        assert span is None
        assert not trace.get_current_span().get_span_context().is_valid
        assert tracing.current_window() == ("acme", W, "features")  # logs still know the window
    assert tracing.current_window() is None
    tracing.record_span("parse", "acme", W, time.time_ns())  # a no-op

    def one() -> None:
        with tracing.window_span("features", "acme", W):
            pass

    per_call = min(timeit.repeat(one, number=20_000, repeat=5)) / 20_000
    # a window's stages take milliseconds; off, a span costs about a microsecond
    assert per_call < 10e-6, f"{per_call * 1e6:.2f} us per window_span with tracing off"


def test_endpoint_from_the_argument_or_the_standard_variables(monkeypatch):
    assert tracing.resolve_endpoint() is None
    assert tracing.resolve_endpoint("http://h:4318") == "http://h:4318/v1/traces"
    assert tracing.resolve_endpoint("http://h:4318/") == "http://h:4318/v1/traces"
    assert tracing.resolve_endpoint("http://h:9/custom/path") == "http://h:9/custom/path"
    monkeypatch.setenv(tracing.BASE_ENV, "http://base:4318")
    assert tracing.resolve_endpoint() == "http://base:4318/v1/traces"
    monkeypatch.setenv(tracing.TRACES_ENV, "http://traces:4318/v1/traces")
    assert tracing.resolve_endpoint() == "http://traces:4318/v1/traces"  # the signal's own wins
    assert tracing.configure("aura-test")  # from the environment
    assert tracing.endpoint() == "http://traces:4318/v1/traces"
    assert tracing.configure("aura-test", "http://other:4318")  # idempotent: the first set-up stays
    assert tracing.endpoint() == "http://traces:4318/v1/traces"


# -- spans -----------------------------------------------------------------------------------
def test_a_windows_stage_spans_share_its_trace_under_its_root(memory):
    t0 = time.time_ns()
    tracing.record_span("parse", "acme", W, t0, source="part-0.ndjson", records=40)
    with tracing.window_span("window", "acme", W, pane=0):
        pass
    with tracing.window_span("features", "acme", W), \
            tracing.window_span("predict", "acme", W, model="cfc"):  # nested: a child of features
        pass
    tracing.record_span("consensus", "acme", W, t0, time.time_ns(), block=7)
    with tracing.window_span("sinks", "acme", W, sink="prediction"):
        pass
    with tracing.window_span("window", "acme", W, pane=1):  # a later pane: the root exists already
        pass
    with tracing.window_span("window", "acme", W + 10_000, pane=0):  # the next window: its own trace
        pass
    spans = memory.get_finished_spans()
    mine = [s for s in spans if s.attributes["aura.window_start_ms"] == W]
    assert {s.name for s in mine} == {f"aura.{x}" for x in STAGES}
    trace_id, root_id = int(tracing.trace_id_for("acme", W), 16), int(tracing.root_span_id_for("acme", W), 16)
    assert {s.context.trace_id for s in mine} == {trace_id}
    by_name = collections.defaultdict(list)
    for s in mine:
        by_name[s.name].append(s)
        assert s.attributes["aura.tenant"] == "acme" and s.attributes["aura.stage"] == s.name[5:]
    root, later = by_name["aura.window"]
    assert root.context.span_id == root_id and root.parent is None and root.attributes["aura.pane"] == 0
    assert later.parent.span_id == root_id and later.context.span_id != root_id
    features, predict = by_name["aura.features"][0], by_name["aura.predict"][0]
    assert predict.parent.span_id == features.context.span_id and predict.attributes["aura.model"] == "cfc"
    for name in ("aura.parse", "aura.features", "aura.consensus", "aura.sinks"):
        assert by_name[name][0].parent.span_id == root_id
    assert by_name["aura.parse"][0].attributes["aura.records"] == 40
    assert by_name["aura.consensus"][0].attributes["aura.block"] == 7
    other = [s for s in spans if s.attributes["aura.window_start_ms"] == W + 10_000]
    assert [s.context.trace_id for s in other] == [int(tracing.trace_id_for("acme", W + 10_000), 16)]
    assert len({s.context.span_id for s in spans}) == len(spans)  # no span id twice


def test_a_failing_stage_is_an_error_span_and_the_error_goes_on(memory):
    with pytest.raises(ZeroDivisionError), tracing.window_span("features", "acme", W):
        1 / 0  # noqa: B018
    (span,) = memory.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_exported_over_otlp_http_to_a_receiver():
    with OTLPReceiver() as rx:
        assert tracing.configure("aura-test", rx.endpoint)
        for w in (W, W + 10_000):
            for stage in ("window", "features", "predict"):
                with tracing.window_span(stage, "acme", w):
                    pass
        assert tracing.flush()
        spans = rx.spans()
    assert len(spans) == 6 and {s.service for s in spans} == {"aura-test"}
    for s in spans:
        w = s.attributes["aura.window_start_ms"]
        assert s.trace_id == tracing.trace_id_for("acme", w)
        root = tracing.root_span_id_for("acme", w)
        expected = (root, "") if s.name == "aura.window" else (s.span_id, root)
        assert (s.span_id, s.parent_span_id) == expected


# -- from the job and from the service -------------------------------------------------------
def _windows(spans: list[ReceivedSpan]) -> dict[tuple[str, int], list[ReceivedSpan]]:
    out = collections.defaultdict(list)
    for s in spans:
        out[(s.attributes["aura.tenant"], s.attributes["aura.window_start_ms"])].append(s)
    return out


def _check_window_traces(spans: list[ReceivedSpan], n_windows: int) -> None:
    """Every window: every stage, one trace, every span under the one root."""
    windows = _windows([s for s in spans if s.service == "aura-job"])
    assert len(windows) == n_windows
    for (tenant, w), mine in windows.items():
        assert {s.attributes["aura.stage"] for s in mine} == STAGES, (tenant, w)
        assert {s.trace_id for s in mine} == {tracing.trace_id_for(tenant, w)}
        root = tracing.root_span_id_for(tenant, w)
        roots = [s for s in mine if s.span_id == root]
        assert len(roots) == 1 and roots[0].name == "aura.window" and roots[0].parent_span_id == ""
        assert all(s.parent_span_id == root for s in mine if s is not roots[0])


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory) -> str:
    """40 s of a 20-agent fleet: four 10 s windows."""
    tele = str(tmp_path_factory.mktemp("tele") / "telemetry")
    assert main(["simulate", "--agents", "20", "--duration", "40", "--seed", "1", "--out", tele]) == 0
    return tele


def test_a_streaming_job_sends_every_stage_of_every_window(telemetry, tmp_path):
    """``aura run --otlp-endpoint``: parse, window, features, predict, consensus and sinks of
    each window in the window's trace; a span another process makes for the same window
    (here: this test's, as the alert service would) joins that trace without propagation."""
    with OTLPReceiver() as rx:
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--input", telemetry,
                               "--out", str(tmp_path / "out"), "--no-progress", "--no-graph",
                               "--otlp-endpoint", rx.endpoint], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rx.wait_quiet(0.5, 10.0)  # the job flushed at exit; this is only the HTTP round trip
        _check_window_traces(rx.spans(), 4)
        assert tracing.configure("aura-alerts", rx.endpoint)
        with tracing.window_span("alert", "acme", W):
            pass
        assert tracing.flush()
        (alert,) = [s for s in rx.spans() if s.service == "aura-alerts"]
    assert alert.trace_id == tracing.trace_id_for("acme", W)
    assert alert.parent_span_id == tracing.root_span_id_for("acme", W)


def test_the_service_passes_its_endpoint_to_its_job(telemetry, tmp_path):
    """``aura api --otlp-endpoint``: the job it starts traces the windows of what it ingests."""
    with OTLPReceiver() as rx:
        api = ApiProcess(str(tmp_path / "svc"), ("--no-graph", "--default-tenant", "acme",
                                                 "--otlp-endpoint", rx.endpoint))
        try:
            api.start()
            for path in sorted(glob.glob(os.path.join(telemetry, "*.ndjson"))):
                with open(path, "rb") as fh:
                    r = httpx.post(api.url + "/v1/telemetry", content=fh.read(), timeout=30.0,
                                   headers={"Content-Type": "application/x-ndjson"})
                assert r.status_code == 202, r.text
        finally:
            assert api.stop() == 0  # drains: the job reads everything landed, then ends
        rx.wait_quiet(0.5, 10.0)
        _check_window_traces(rx.spans(), 4)
    assert any(f"traces of AURA itself to {rx.endpoint}" in r["msg"] for r in api.log_records())
