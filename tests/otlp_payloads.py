"""OTLP export requests made by the real OpenTelemetry SDK, for tests and benchmarks.

Spans are created with the SDK's tracers (one ``TracerProvider`` per service, each with its
own ``service.name`` resource) into an in-memory exporter, with explicit start and end
times, then encoded by the OTLP exporter's own encoder - the bytes an ``OTLPSpanExporter``
would send.
"""

from __future__ import annotations

import random

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

SERVICES = ("gateway", "planner", "retriever", "search", "llm", "tools", "memory", "ranker")
# caller -> callees of the fleet the payloads describe
WIRING = {"gateway": ("planner",), "planner": ("retriever", "llm", "tools"),
          "retriever": ("search", "memory"),
          "llm": (), "tools": ("ranker",), "search": (), "memory": (), "ranker": ()}


class Fleet:
    """One TracerProvider per service, all into one in-memory exporter."""

    def __init__(self, services=SERVICES, extra_resource: dict | None = None):
        self.exporter = InMemorySpanExporter()
        self.tracers = {}
        for name in services:
            resource = Resource.create({"service.name": name, **(extra_resource or {})})
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            self.tracers[name] = provider.get_tracer("aura.tests")

    def take(self):
        spans = self.exporter.get_finished_spans()
        self.exporter.clear()
        return spans


def serve_request(fleet: Fleet, rng: random.Random, service: str, parent_ctx, start_ns: int,
          fail_p: float) -> tuple[int, bool]:
    """A request served by ``service`` (SERVER span) with CLIENT spans to its callees; (end ns, error)."""
    tracer = fleet.tracers[service]
    server = tracer.start_span(f"invoke_agent {service}", context=parent_ctx, kind=SpanKind.SERVER,
                               start_time=start_ns,
                               attributes={"gen_ai.operation.name": "invoke_agent"})
    t = start_ns + int(rng.uniform(0.5, 3) * 1e6)
    failed = False
    for callee in WIRING[service]:
        client = tracer.start_span(f"POST {callee}", context=trace.set_span_in_context(server),
                                   kind=SpanKind.CLIENT, start_time=t,
                                   attributes={"service.peer.name": callee, "server.address": "127.0.0.1"})
        end, err = serve_request(fleet, rng, callee, trace.set_span_in_context(client), t + 200_000, fail_p)
        if err:
            client.set_status(Status(StatusCode.ERROR))
            client.set_attribute("error.type", "500")
            failed = True
        client.end(end_time=end + 300_000)
        t = end + 400_000
    if rng.random() < fail_p:
        failed = True
    if failed:
        server.set_status(Status(StatusCode.ERROR))
        server.set_attribute("error.type", "upstream")
    end = t + int(rng.uniform(1, 20) * 1e6)
    server.end(end_time=end)
    return end, failed


def fleet_request(n_spans: int, t0_s: float, seed: int = 0, fail_p: float = 0.02,
                  fleet: Fleet | None = None) -> bytes:
    """A serialized ExportTraceServiceRequest of about ``n_spans`` spans (whole traces through the
    fleet, entering at ``gateway``) starting within the second after ``t0_s``."""
    fleet = fleet or Fleet()
    rng = random.Random(seed)
    spans = []
    while len(spans) < n_spans:
        serve_request(fleet, rng, "gateway", None, int((t0_s + rng.random() * 0.9) * 1e9), fail_p)
        spans += fleet.take()
    return encode_spans(spans[:n_spans]).SerializeToString()


def shifted(body: bytes, dt_s: float, salt: int) -> bytes:
    """The same request ``dt_s`` later with fresh trace and span ids (parent links kept): many
    distinct requests from a few SDK-made templates."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest.FromString(body)
    dt = int(dt_s * 1e9)
    key8 = (salt & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    key16 = key8 * 2

    def mix(raw: bytes, key: bytes) -> bytes:
        return bytes(a ^ b for a, b in zip(raw, key)) if raw else raw

    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.start_time_unix_nano += dt
                s.end_time_unix_nano += dt
                s.trace_id = mix(s.trace_id, key16)
                s.span_id = mix(s.span_id, key8)
                s.parent_span_id = mix(s.parent_span_id, key8)
    return req.SerializeToString()
