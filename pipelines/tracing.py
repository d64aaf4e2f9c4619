"""Traces of AURA itself: one span per (tenant, window) per stage, exported over OTLP/HTTP.

Off unless an endpoint is configured (``configure(..., endpoint)``, or the SDK's standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``); off, a
``window_span`` only sets the log context (``current_window``) and costs well under a
microsecond.

One trace per window, without context propagation: the trace id is a hash of (tenant, window
start ms) (``trace_id_for``), so the job, its validators and the alert service - any process,
either engine - put their spans of a window into the same trace. The tree is flat and
deterministic: the ``window`` stage's span is the trace's root, with a span id that is also a
hash of (tenant, window) (``root_span_id_for``); every other stage span is a child of that id
(or of the enclosing span when it is nested in another span of the same window). A stage that
runs before its window closes (``parse``: per landed file) is still a child of the root, so
the viewer's timeline reads parse -> window -> features -> predict -> consensus -> sinks.
A later pane of a window this process already emitted the root for becomes a child of it
(a root id is never emitted twice by one process; a restarted job may emit it again).
Because the trace id depends only on the window, a ratio sampler (``OTEL_TRACES_SAMPLER``)
keeps or drops a window's spans alike in every process.

Engine-neutral: no Beam or Flink import here.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

TRACES_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
BASE_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SCOPE = "aura.pipeline"
_ROOT_STAGE = "window"
_ROOTS_KEPT = 65536  # (tenant, window) roots this process emitted, remembered (LRU)


class WindowContext(NamedTuple):
    """The window a piece of work is for (what logs carry; see ``pipelines.logs``)."""

    tenant: str
    window_ms: int
    stage: str

    @property
    def trace_id(self) -> str:
        return trace_id_for(self.tenant, self.window_ms)


_current: contextvars.ContextVar[WindowContext | None] = contextvars.ContextVar("aura_window", default=None)


def current_window() -> WindowContext | None:
    """The innermost ``window_span`` being run in this context, or None."""
    return _current.get()


# -- ids -----------------------------------------------------------------------------------
def _digest(kind: bytes, tenant: str, window_ms: int, size: int) -> int:
    h = hashlib.blake2b(f"{tenant}\x00{int(window_ms)}".encode(), digest_size=size, person=kind)
    return int.from_bytes(h.digest(), "big") or 1  # all-zero ids are invalid in OTel


def trace_id_int(tenant: str, window_ms: int) -> int:
    return _digest(b"aura.trace", tenant, window_ms, 16)


def root_span_id_int(tenant: str, window_ms: int) -> int:
    return _digest(b"aura.window", tenant, window_ms, 8)


def trace_id_for(tenant: str, window_ms: int) -> str:
    """The trace id (32 lowercase hex) of a tenant's window starting at ``window_ms``."""
    return f"{trace_id_int(tenant, window_ms):032x}"


def root_span_id_for(tenant: str, window_ms: int) -> str:
    """The span id (16 lowercase hex) of the window's root span (the ``window`` stage)."""
    return f"{root_span_id_int(tenant, window_ms):016x}"


class _WindowIds(IdGenerator):
    """Random ids, except for a window's root span: there both come from (tenant, window)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.forced: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
            "aura_forced_ids", default=None)

    def generate_trace_id(self) -> int:
        forced = self.forced.get()
        return forced[0] if forced else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        forced = self.forced.get()
        return forced[1] if forced else self._random.generate_span_id()


# -- set-up ------------------------------------------------------------------------------
class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.provider = None  # opentelemetry.sdk.trace.TracerProvider when on
        self.tracer: trace.Tracer | None = None
        self.ids: _WindowIds | None = None
        self.endpoint: str | None = None
        self.roots: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.atexit = False


_state = _State()


def resolve_endpoint(endpoint: str | None = None) -> str | None:
    """The OTLP/HTTP traces URL: ``endpoint`` (a base URL gets ``/v1/traces``), else
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as is, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` +
    ``/v1/traces``; None when none is set."""
    if endpoint:
        return endpoint if urlsplit(endpoint).path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"
    if os.environ.get(TRACES_ENV):
        return os.environ[TRACES_ENV]
    if os.environ.get(BASE_ENV):
        return os.environ[BASE_ENV].rstrip("/") + "/v1/traces"
    return None


def configure(service_name: str, endpoint: str | None = None, *, exporter=None) -> bool:
    """Turn tracing on when an OTLP endpoint is given or set in the environment (http/protobuf,
    batched); whether tracing is on. Idempotent: once on, later calls change nothing.
    ``exporter`` (tests): export to this ``SpanExporter`` instead, span by span."""
    with _state.lock:
        if _state.provider is not None:
            return True
        url = resolve_endpoint(endpoint)
        if url is None and exporter is None:
            return False
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        ids = _WindowIds()
        resource = Resource.create({SERVICE_NAME: service_name,
                                    "service.instance.id": f"{socket.gethostname()}:{os.getpid()}"})
        provider = TracerProvider(resource=resource, id_generator=ids, shutdown_on_exit=False)
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        _state.provider, _state.ids, _state.endpoint = provider, ids, url
        _state.tracer = provider.get_tracer(SCOPE)
        _state.roots.clear()
        if not _state.atexit:
            atexit.register(shutdown)
            _state.atexit = True
        return True


def enabled() -> bool:
    """Whether spans are recorded and exported."""
    return _state.tracer is not None


def endpoint() -> str | None:
    """Where spans go (None: off, or a test's exporter)."""
    return _state.endpoint


def flush(timeout_ms: int = 10_000) -> bool:
    """Export what is buffered now; whether it finished in time (True when off)."""
    provider = _state.provider
    return provider.force_flush(timeout_ms) if provider is not None else True


def shutdown() -> None:
    """Flush and stop exporting; tracing is off afterwards (``configure`` may turn it on again)."""
    with _state.lock:
        provider, _state.provider, _state.tracer, _state.ids = _state.provider, None, None, None
        _state.endpoint = None
    if provider is not None:
        provider.shutdown()


# -- spans ---------------------------------------------------------------------------------
def _first_root(tenant: str, window_ms: int) -> bool:
    """True the first time this process emits the root of (tenant, window)."""
    key = (tenant, window_ms)
    with _state.lock:
        if key in _state.roots:
            _state.roots.move_to_end(key)
            return False
        _state.roots[key] = None
        if len(_state.roots) > _ROOTS_KEPT:
            _state.roots.popitem(last=False)
        return True


def _parent(tenant: str, window_ms: int, stage: str) -> tuple[otel_context.Context, bool]:
    """The context to start a stage span in, and whether it is the window's root."""
    trace_id = trace_id_int(tenant, window_ms)
    if stage == _ROOT_STAGE and _first_root(tenant, window_ms):
        return otel_context.Context(), True  # no parent: ids forced to the window's
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == trace_id:
        return otel_context.get_current(), False  # nested in a span of the same window
    root = trace.SpanContext(trace_id, root_span_id_int(tenant, window_ms), is_remote=True,
                             trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return trace.set_span_in_context(trace.NonRecordingSpan(root), otel_context.Context()), False


def _attributes(stage: str, tenant: str, window_ms: int, extra: dict) -> dict:
    attrs = {"aura.stage": stage, "aura.tenant": tenant, "aura.window_start_ms": int(window_ms)}
    for k, v in extra.items():
        if v is not None:
            attrs[k if "." in k else f"aura.{k}"] = v
    return attrs


def _start(stage: str, tenant: str, window_ms: int, attributes: dict, start_ns: int | None = None):
    tracer, ids = _state.tracer, _state.ids
    parent, is_root = _parent(tenant, window_ms, stage)
    token = ids.forced.set((trace_id_int(tenant, window_ms), root_span_id_int(tenant, window_ms))) \
        if is_root else None
    try:
        return tracer.start_span(f"aura.{stage}", context=parent, start_time=start_ns,
                                 attributes=_attributes(stage, tenant, window_ms, attributes))
    finally:
        if token is not None:
            ids.forced.reset(token)


class _Off:
    """A window span with tracing off: only the log context."""

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: WindowContext) -> None:
        self._ctx = ctx

    def __enter__(self) -> None:
        self._token = _current.set(self._ctx)

    def __exit__(self, *exc) -> None:
        _current.reset(self._token)


@contextlib.contextmanager
def _on(stage: str, tenant: str, window_ms: int, attributes: dict) -> Iterator[trace.Span]:
    span = _start(stage, tenant, window_ms, attributes)
    token = _current.set(WindowContext(tenant, window_ms, stage))
    try:
        with trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
            yield span
    finally:
        _current.reset(token)


def window_span(stage: str, tenant: str, window_ms: int, **attributes) -> contextlib.AbstractContextManager:
    """``with window_span("features", tenant, window_ms, rows=3): ...``: a span ``aura.<stage>``
    in the window's trace (attributes ``aura.stage``, ``aura.tenant``, ``aura.window_start_ms``
    and the given ones, ``aura.``-prefixed unless dotted; None values dropped). Yields the
    span (None with tracing off); an exception marks it as an error and goes on."""
    if _state.tracer is None:
        return _Off(WindowContext(tenant, int(window_ms), stage))
    return _on(stage, tenant, int(window_ms), attributes)


def record_span(stage: str, tenant: str, window_ms: int, start_ns: int, end_ns: int | None = None,
                **attributes) -> None:
    """A stage span for work already done (timed by the caller, ``time.time_ns()``), e.g.
    parsing a file that fed several windows. Nothing with tracing off."""
    if _state.tracer is None:
        return
    span = _start(stage, tenant, int(window_ms), attributes, start_ns)
    span.end(end_ns if end_ns is not None else time.time_ns())
