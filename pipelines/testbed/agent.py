"""One testbed agent process: a LangGraph agent behind HTTP, traced with OpenTelemetry.

``python -m pipelines.testbed.agent --spec JSON-or-file`` serves, on 127.0.0.1:

- ``POST /invoke``: admitted into a bounded pool (``workers`` concurrent requests plus a
  queue of ``queue``; a full queue answers 503 at once). A worker runs a compiled
  LangGraph ``StateGraph``: a "model" node whose language-model call is replaced by a
  latency model (service time drawn from the configured distribution, times the runtime
  slow factor; an injected error with the runtime probability), then a node calling every
  downstream agent in parallel (round robin over its replicas, a total timeout per attempt,
  retries with backoff on a timeout, a connection error or a 5xx). A downstream that still
  fails fails the request (500) or degrades it (200, ``degraded``), as configured.
- ``POST /control``: runtime behaviour (``slow_factor`` with ``ramp_s``, ``error_prob``).
- ``GET /healthz``, ``GET /stats`` (counters, span counts, CPU seconds).

Spans (exported over OTLP/HTTP protobuf with a ``BatchSpanProcessor``; resource
``service.name`` = agent, ``aura.tenant``, ``service.instance.id`` = agent/replica):

- SERVER ``invoke_agent {agent}`` per request (also for rejected ones):
  ``gen_ai.operation.name=invoke_agent``, ``gen_ai.agent.name``, ``http.response.status_code``,
  ``aura.queue_depth`` / ``aura.in_flight`` at arrival; on failure status ERROR and
  ``error.type`` (queue_full, injected, downstream_error).
- CLIENT ``POST /invoke`` per downstream attempt, child of the SERVER span:
  ``service.peer.name`` = callee, ``server.address``, ``server.port``,
  ``http.request.resend_count`` on retries, status ERROR and ``error.type`` (timeout,
  connection_error, or the status code) on failure. Its context goes out as W3C
  ``traceparent``, so the callee's SERVER span is its child.

SIGTERM: stop accepting, finish in-flight requests (2 s grace), flush spans, write the
final ``/stats`` to ``stats_path``, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import httpx
import uvicorn
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.testbed.spec import ProcessSpec, Ramp, RetryPolicy


class _EndCounter(SpanProcessor):
    """Counts spans ended (handed to export), to reconcile against spans exported."""

    def __init__(self) -> None:
        self.ended = 0
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.ended += 1


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting spans whose export succeeded or failed."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner, self.exported, self.failed = inner, 0, 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class State(TypedDict, total=False):
    model_s: float
    error: str | None
    degraded: bool
    failed_calls: list[str]


@dataclass
class _Job:
    span: trace.Span
    future: asyncio.Future


class Agent:
    """The agent's runtime: worker pool, graph, tracer, downstream client, counters."""

    def __init__(self, spec: ProcessSpec):
        self.spec, self.cfg = spec, spec.agent
        self.name = self.cfg.name
        missing = [c for c in self.cfg.calls if not spec.downstream.get(c)]
        if missing:
            raise ValueError(f"agent {self.name}: no replica URLs for callees {missing}")
        self.rng = random.Random(f"{spec.seed}/{self.name}/{spec.replica}")
        resource = Resource.create({
            "service.name": self.name, "service.instance.id": f"{self.name}/{spec.replica}",
            "aura.tenant": spec.tenant, "process.pid": os.getpid(),
        })
        self.provider = TracerProvider(resource=resource)
        self.ends = _EndCounter()
        self.exporter = _CountingExporter(OTLPSpanExporter(
            endpoint=spec.otlp_endpoint, headers={"X-Aura-Tenant": spec.tenant}, timeout=5))
        self.provider.add_span_processor(self.ends)
        self.provider.add_span_processor(BatchSpanProcessor(
            self.exporter, schedule_delay_millis=spec.export_delay_ms, max_queue_size=16384,
            max_export_batch_size=1024))
        self.tracer = self.provider.get_tracer("aura.testbed")
        # callee -> its replicas in turn, as (base URL, host, port)
        self._rr = {c: itertools.cycle([(u, httpx.URL(u).host, httpx.URL(u).port) for u in urls])
                    for c, urls in spec.downstream.items()}
        self.graph = self._build_graph()
        self.slow = Ramp()
        self.errors = Ramp(0.0, 0.0)  # the fraction of requests failed on purpose
        self.counts = dict.fromkeys(("received", "rejected", "ok", "failed", "degraded", "injected",
                                     "attempts", "retries", "attempt_errors", "calls_failed"), 0)
        self.busy = 0
        self.queue: asyncio.Queue[_Job] | None = None
        self.client: httpx.AsyncClient | None = None
        self.port = spec.port

    # ---------------------------------------------------------------- runtime behaviour
    def slow_factor(self) -> float:
        return self.slow.value(time.monotonic())

    def error_prob(self) -> float:
        return self.errors.value(time.monotonic())

    def control(self, body: dict) -> dict:
        """Change runtime behaviour: ``slow_factor`` and ``error_prob``, each reached over
        ``ramp_s`` seconds from its current value; the targets now in force."""
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        unknown = set(body) - {"slow_factor", "ramp_s", "error_prob"}
        if unknown:
            raise ValueError(f"unknown control fields {sorted(unknown)}")
        if "slow_factor" in body:
            target = float(body["slow_factor"])
            if target <= 0:
                raise ValueError("slow_factor must be positive")
            self.slow.retarget(target, float(body.get("ramp_s", 0.0)), time.monotonic())
        if "error_prob" in body:
            p = float(body["error_prob"])
            if not 0 <= p <= 1:
                raise ValueError("error_prob must be in [0, 1]")
            self.errors.retarget(p, float(body.get("ramp_s", 0.0)), time.monotonic())
        return {"slow_factor": self.slow.target, "ramp_s": self.slow.ramp_s, "error_prob": self.errors.target}

    def stats(self) -> dict:
        return {
            "agent": self.name, "replica": self.spec.replica, "pid": os.getpid(), **self.counts,
            "in_flight": self.busy, "queue_depth": self.queue.qsize() if self.queue else 0,
            "slow_factor": round(self.slow_factor(), 4), "error_prob": round(self.error_prob(), 4),
            "spans_ended": self.ends.ended, "spans_exported": self.exporter.exported,
            "spans_export_failed": self.exporter.failed, "cpu_s": round(time.process_time(), 3),
        }

    # ---------------------------------------------------------------- the graph
    def _build_graph(self):
        async def model(state: State, config: RunnableConfig) -> State:
            if config["configurable"].get("dry"):  # warm-up: no latency, no calls
                return {"model_s": 0.0, "error": "dry"}
            seconds = self.cfg.service_time.sample(self.rng) * self.slow_factor()
            await asyncio.sleep(seconds)
            p = self.error_prob()
            if p and self.rng.random() < p:
                self.counts["injected"] += 1
                return {"model_s": seconds, "error": "injected"}
            return {"model_s": seconds, "error": None}

        async def call_downstream(state: State, config: RunnableConfig) -> State:
            parent = config["configurable"]["otel_context"]
            oks = await asyncio.gather(*(self._call(c, parent) for c in self.cfg.calls))
            failed = [c for c, ok in zip(self.cfg.calls, oks) if not ok]
            if failed and self.cfg.on_failure == "fail":
                return {"failed_calls": failed, "error": "downstream_error"}
            return {"failed_calls": failed, "degraded": bool(failed)}

        async def route(state: State) -> str:  # async: a sync router would run in a thread
            return END if state.get("error") else "call_downstream"

        g = StateGraph(State)
        g.add_node("model", model)
        g.add_edge(START, "model")
        if self.cfg.calls:
            g.add_node("call_downstream", call_downstream)
            g.add_conditional_edges("model", route, ["call_downstream", END])
            g.add_edge("call_downstream", END)
        else:  # a leaf: nothing to route to
            g.add_edge("model", END)
        return g.compile()

    async def _call(self, callee: str, parent: Context) -> bool:
        """One downstream call with retries; True when an attempt succeeded."""
        retry: RetryPolicy = self.cfg.retry
        for attempt in range(1, retry.max_attempts + 1):
            url, host, port = next(self._rr[callee])
            span = self.tracer.start_span("POST /invoke", context=parent, kind=SpanKind.CLIENT, attributes={
                "service.peer.name": callee, "server.address": host, "server.port": port,
                "http.request.method": "POST", "url.full": f"{url}/invoke"})
            if attempt > 1:
                span.set_attribute("http.request.resend_count", attempt - 1)
                self.counts["retries"] += 1
            self.counts["attempts"] += 1
            headers: dict[str, str] = {}
            propagate.inject(headers, context=trace.set_span_in_context(span, parent))
            error = None
            try:
                async with asyncio.timeout(self.cfg.timeout_s):
                    r = await self.client.post(f"{url}/invoke", json={}, headers=headers)
                span.set_attribute("http.response.status_code", r.status_code)
                if r.status_code >= 500:
                    error = str(r.status_code)
                elif r.status_code >= 400:  # not retried: the request itself is wrong
                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attribute("error.type", str(r.status_code))
                    span.end()
                    self.counts["attempt_errors"] += 1
                    self.counts["calls_failed"] += 1
                    return False
            except TimeoutError:
                error = "timeout"
            except httpx.TransportError:
                error = "connection_error"
            if error is None:
                span.end()
                return True
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", error)
            span.end()
            self.counts["attempt_errors"] += 1
            if attempt < retry.max_attempts:
                await asyncio.sleep(retry.delay(attempt, self.rng))
        self.counts["calls_failed"] += 1
        return False

    # ---------------------------------------------------------------- serving
    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            self.busy += 1
            try:
                ctx = trace.set_span_in_context(job.span)
                state = await self.graph.ainvoke({}, config={"configurable": {"otel_context": ctx}})
                if not job.future.done():
                    job.future.set_result(state)
            except Exception as err:  # noqa: BLE001 - answered as a 500 with the reason
                if not job.future.done():
                    job.future.set_exception(err)
            finally:
                self.busy -= 1

    async def invoke(self, request: Request) -> JSONResponse:
        self.counts["received"] += 1
        span = self.tracer.start_span(
            f"invoke_agent {self.name}", context=propagate.extract(request.headers), kind=SpanKind.SERVER,
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.name,
                        "http.request.method": "POST", "url.path": "/invoke",
                        "server.address": "127.0.0.1", "server.port": self.port,
                        "aura.queue_depth": self.queue.qsize(), "aura.in_flight": self.busy})
        job = _Job(span, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.counts["rejected"] += 1
            return self._finish(span, 503, "queue_full", {})
        try:
            state = await job.future
        except Exception as err:  # noqa: BLE001
            return self._finish(span, 500, type(err).__name__, {})
        if state.get("error"):
            return self._finish(span, 500, state["error"], state)
        if state.get("degraded"):
            self.counts["degraded"] += 1
            span.set_attribute("aura.degraded", True)
        return self._finish(span, 200, None, state)

    def _finish(self, span: trace.Span, status: int, error: str | None, state: dict) -> JSONResponse:
        span.set_attribute("http.response.status_code", status)
        if error:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", error)
            if status != 503:
                self.counts["failed"] += 1
        else:
            self.counts["ok"] += 1
        span.end()
        return JSONResponse({"agent": self.name, "ok": error is None, "error": error,
                             "degraded": bool(state.get("degraded")),
                             "failed_calls": state.get("failed_calls", [])}, status_code=status)

    async def control_endpoint(self, request: Request) -> JSONResponse:
        try:
            return JSONResponse(self.control(await request.json()))
        except (ValueError, TypeError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "agent": self.name, "replica": self.spec.replica})

    async def stats_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse(self.stats())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.queue = asyncio.Queue(maxsize=max(1, self.cfg.queue))
        n = max(4, len(self.cfg.calls)) * self.cfg.workers * self.cfg.retry.max_attempts
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                                        timeout=None)
        # the first run of a graph pays for lazy imports and caches; not a request's job
        await self.graph.ainvoke({}, config={"configurable": {"dry": True}})
        workers = [asyncio.create_task(self._worker()) for _ in range(self.cfg.workers)]
        try:
            yield
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.client.aclose()
            self.provider.shutdown()  # flushes the batch processor
            if self.spec.stats_path:
                tmp = self.spec.stats_path + ".tmp"
                with open(tmp, "w") as fh:
                    json.dump(self.stats(), fh)
                os.replace(tmp, self.spec.stats_path)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/invoke", self.invoke, methods=["POST"]),
            Route("/control", self.control_endpoint, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/stats", self.stats_endpoint, methods=["GET"]),
        ], lifespan=self.lifespan)


def serve(spec: ProcessSpec) -> None:
    """Serve until SIGTERM/SIGINT, then shut down cleanly (spans flushed)."""
    sock = None
    if spec.fd is not None:
        sock = socket.socket(fileno=spec.fd)
        spec.port = sock.getsockname()[1]
    agent = Agent(spec)
    config = uvicorn.Config(agent.app(), host="127.0.0.1", port=spec.port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=2,
                            timeout_keep_alive=30, backlog=1024, proxy_headers=False,
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it is done; make that a clean exit
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock] if sock else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="ProcessSpec as JSON, or a JSON file")
    a = p.parse_args(argv)
    text = a.spec if a.spec.lstrip().startswith("{") else Path(a.spec).read_text()
    serve(ProcessSpec.from_dict(json.loads(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

