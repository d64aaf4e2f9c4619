"""OTLP/HTTP decoding and the span -> telemetry mapping (``schemas/otlp_mapping.md``), span by
span, with spans made by the real OpenTelemetry SDK (``TracerProvider``, in-memory exporter)
and encoded by the OTLP exporter's own encoder."""

from __future__ import annotations

import base64
import gzip
import json
import random

import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from pipelines.service import span_mapping as sm
from pipelines.service.otlp import OtlpDecodeError, count_spans, decode_traces
from pipelines.service.span_mapping import SpanAggregator, to_ndjson
from pipelines.telemetry import parse_lines
from tests.conftest import T0

T0_NS = int(T0) * 1_000_000_000
SERVER, CLIENT, INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
INVOKE = {"gen_ai.operation.name": "invoke_agent"}


def at(ms: float) -> int:
    """T0 + ms milliseconds, in ns."""
    return T0_NS + int(round(ms * 1e6))


def sec(k: int) -> int:
    """``ts`` of the record for second k after T0 (the bucket's end)."""
    return int(T0) + k + 1


class Fleet:
    """One real SDK TracerProvider per service, each exporting to memory."""

    def __init__(self):
        self.tracers: dict[str, trace.Tracer] = {}
        self.exporters: dict[str, InMemorySpanExporter] = {}

    def tracer(self, service: str | None, **resource) -> trace.Tracer:
        key = f"{service}|{sorted(resource.items())}"
        if key not in self.tracers:
            res = Resource.create({"service.name": service, **resource}) if service else Resource(resource)
            exp = InMemorySpanExporter()
            provider = TracerProvider(resource=res)
            provider.add_span_processor(SimpleSpanProcessor(exp))
            self.tracers[key], self.exporters[key] = provider.get_tracer("aura.test"), exp
        return self.tracers[key]

    def start(self, service: str | None, name: str, kind=INTERNAL, start: float = 0.0, parent=None,
              attrs: dict | None = None, resource: dict | None = None):
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        return self.tracer(service, **(resource or {})).start_span(
            name, context=ctx, kind=kind, attributes=attrs, start_time=at(start))

    def span(self, service: str | None, name: str, kind=INTERNAL, start: float = 0.0, end: float = 1.0,
             parent=None, attrs: dict | None = None, error: bool = False, resource: dict | None = None):
        sp = self.start(service, name, kind, start, parent, attrs, resource)
        if error:
            sp.set_status(Status(StatusCode.ERROR))
        sp.end(end_time=at(end))
        return sp

    def finished(self) -> list:
        out = [s for exp in self.exporters.values() for s in exp.get_finished_spans()]
        for exp in self.exporters.values():
            exp.clear()
        return sorted(out, key=lambda s: s.end_time)

    def export(self) -> ExportTraceServiceRequest:
        """Every span finished since the last export, encoded by the OTLP exporter's encoder."""
        return encode_spans(self.finished())


def assert_valid(records: list[dict]) -> None:
    res = parse_lines(to_ndjson(records).splitlines(), "mapping")
    assert res.dead == [] and res.n_read == len(records)


def reconciled(agg: SpanAggregator) -> bool:
    c = agg.counts
    return c["spans_received"] == c["spans_in_records"] + c["spans_dead_total"] + c["spans_pending"]


def run(*reqs: ExportTraceServiceRequest, **kw) -> tuple[list[dict], list, SpanAggregator]:
    agg = SpanAggregator(**kw)
    for i, req in enumerate(reqs):
        agg.add(req, f"req{i}")
    res = agg.flush()
    assert_valid(res.records)
    assert reconciled(agg) and agg.counts["spans_pending"] == 0
    return res.records, res.dead, agg


def rec(records: list[dict], agent: str, k: int = 0) -> dict:
    [r] = [r for r in records if r["agent_id"] == agent and r["ts"] == sec(k)]
    return r


def calls(records: list[dict]) -> dict[tuple[str, str], dict]:
    out = {}
    for r in records:
        for c in r["calls"]:
            assert (r["agent_id"], c["dst"]) not in out
            out[(r["agent_id"], c["dst"])] = c
    return out


# ------------------------------------------------------------------------------- decoding
def otlp_json(req: ExportTraceServiceRequest, int_enums: bool = True) -> bytes:
    """OTLP/JSON as the spec writes it: protobuf JSON mapping, but ids as hex strings."""
    doc = json_format.MessageToDict(req, use_integers_for_enums=int_enums)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for obj in [span, *span.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in obj:
                            obj[key] = base64.b64decode(obj[key]).hex()
    return json.dumps(doc).encode()


@pytest.fixture
def sdk_request() -> tuple[ExportTraceServiceRequest, list]:
    fleet = Fleet()
    root = fleet.start("frontend", "GET /", SERVER, 0)
    client = fleet.start("frontend", "POST", CLIENT, 5, parent=root, attrs={"server.address": "backend"})
    child = fleet.start("backend", "POST /", SERVER, 6, parent=client)
    linked = fleet.tracer("backend").start_span("job", links=[trace.Link(root.get_span_context())],
                                                start_time=at(7))
    for sp, t in ((linked, 8), (child, 9), (client, 10), (root, 12)):
        sp.end(end_time=at(t))
    sdk_spans = fleet.finished()
    return encode_spans(sdk_spans), sdk_spans


def test_protobuf_and_gzip_bodies_decode_to_the_sdk_message(sdk_request):
    req, _ = sdk_request
    body = req.SerializeToString()
    assert decode_traces(body, "application/x-protobuf") == req
    assert decode_traces(gzip.compress(body), "application/x-protobuf", "gzip") == req
    assert decode_traces(gzip.compress(body[:50]) + gzip.compress(body[50:]), "application/x-protobuf",
                         "GZIP") == req  # multi-member gzip
    assert count_spans(req) == 4


@pytest.mark.parametrize("int_enums", [True, False])
def test_json_body_decodes_hex_ids_exactly(sdk_request, int_enums):
    req, sdk_spans = sdk_request
    body = otlp_json(req, int_enums)
    got = decode_traces(body, "application/json; charset=utf-8")
    assert got == req
    ids = {(s.span_id, s.trace_id, s.parent_span_id, s.kind)
           for rs in got.resource_spans for ss in rs.scope_spans for s in ss.spans}
    want = {(sp.context.span_id.to_bytes(8, "big"), sp.context.trace_id.to_bytes(16, "big"),
             sp.parent.span_id.to_bytes(8, "big") if sp.parent else b"", sp.kind.value + 1)
            for sp in sdk_spans}
    assert ids == want
    assert decode_traces(gzip.compress(body), "application/json", "gzip") == req
    # the pitfall the hex conversion avoids: protobuf's own JSON parser reads hex as base64
    naive = json_format.Parse(body, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    assert len(naive.resource_spans[0].scope_spans[0].spans[0].trace_id) == 24


def test_json_and_protobuf_exports_map_to_the_same_records(sdk_request):
    req, _ = sdk_request
    via_json = decode_traces(gzip.compress(otlp_json(req)), "application/json", "gzip")
    via_pb = decode_traces(req.SerializeToString(), "application/x-protobuf")
    assert run(via_json)[0] == run(via_pb)[0]
    assert calls(run(via_json)[0]) == {("frontend", "backend"): {"dst": "backend", "count": 1, "errors": 0,
                                                                 "latency_ms": 5.0}}


def test_json_ignores_unknown_fields_and_accepts_an_empty_export():
    assert count_spans(decode_traces(b'{"resourceSpans": [], "futureField": 1}', "application/json")) == 0
    assert count_spans(decode_traces(b"", "application/x-protobuf")) == 0


def gzip_bomb() -> bytes:
    return gzip.compress(bytes(20_000_000), compresslevel=9)


@pytest.mark.parametrize(("body", "ctype", "encoding", "reason"), [
    (b"\x0a\x05abc", "application/x-protobuf", None, "bad_protobuf"),
    (b"{not json", "application/json", None, "bad_json"),
    (b"[1, 2]", "application/json", None, "bad_json"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz"}]}]}]}', "application/json", None,
     "bad_json"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}', "application/json",
     None, "bad_json"),
    (b'{"resourceSpans": 3}', "application/json", None, "bad_json"),
    (b"\x1f\x8b\x08\x00garbage", "application/x-protobuf", "gzip", "bad_gzip"),
    (gzip.compress(b"x" * 1000)[:-12], "application/x-protobuf", "gzip", "bad_gzip"),  # truncated
    (gzip_bomb(), "application/x-protobuf", "gzip", "too_large"),
    (bytes(2_000_000), "application/x-protobuf", None, "too_large"),
    (b"", "text/plain", None, "unsupported_media_type"),
    (b"", None, None, "unsupported_media_type"),
    (b"", "application/json", "br", "unsupported_encoding"),
])
def test_bad_bodies_raise_with_a_reason(body, ctype, encoding, reason):
    with pytest.raises(OtlpDecodeError) as err:
        decode_traces(body, ctype, encoding, max_decompressed=1_000_000)
    assert err.value.reason == reason and str(err.value)


# ------------------------------------------------------------------------- agent metrics
def test_request_count_error_rate_and_percentiles_of_server_spans():
    fleet = Fleet()
    durations = np.arange(1, 101, dtype=float)  # ms
    for i, d in enumerate(durations):
        status_error, error_type = i < 7, 7 <= i < 10
        fleet.span("checkout", "GET /", SERVER, 100, 100 + d, error=status_error,
                   attrs={"error.type": "timeout"} if error_type else None)
    fleet.span("checkout", "db", INTERNAL, 100, 900, error=True)  # not a request
    fleet.span("checkout", "render", INTERNAL, 300, 400)
    records, dead, agg = run(fleet.export())
    assert dead == []
    r = rec(records, "checkout")
    assert r["request_count"] == 100
    assert r["error_rate"] == pytest.approx(0.10)
    assert r["latency_p50_ms"] == pytest.approx(np.percentile(durations, 50), abs=1e-3)
    assert r["latency_p99_ms"] == pytest.approx(np.percentile(durations, 99), abs=1e-3)
    assert (r["cpu"], r["memory"], r["queue_depth"], r["calls"]) == (0.0, 0.0, 0, [])
    assert agg.counts["spans_in_records"] == 102 and agg.counts["records_produced"] == 1


def test_consumer_spans_are_requests_and_an_agent_with_only_internal_spans_gets_a_record():
    fleet = Fleet()
    fleet.span("worker", "process", SpanKind.CONSUMER, 10, 30)
    fleet.span("cron", "tick", INTERNAL, 10, 20)
    records, _, _ = run(fleet.export())
    assert rec(records, "worker")["request_count"] == 1
    cron = rec(records, "cron")
    assert (cron["request_count"], cron["latency_p50_ms"], cron["latency_p99_ms"], cron["error_rate"]) \
        == (0, 0.0, 0.0, 0.0)


def test_spans_land_in_the_second_of_their_end_time():
    fleet = Fleet()
    fleet.span("a", "GET", SERVER, 900, 1100)  # ends in second 1
    fleet.span("a", "GET", SERVER, 100, 200)
    fleet.span("a", "GET", SERVER, 1500, 2000)  # ends exactly at second 2's start
    records, _, _ = run(fleet.export())
    assert [(r["ts"], r["request_count"]) for r in records] == [(sec(0), 1), (sec(1), 1), (sec(2), 1)]


def test_in_flight_counts_request_spans_open_at_the_second_end():
    fleet = Fleet()
    fleet.span("a", "long", SERVER, 500, 3200)  # open at the ends of seconds 0, 1, 2
    fleet.span("a", "long2", SERVER, 1000, 2500)  # starts exactly at the end of second 0
    for k in range(4):
        fleet.span("a", "short", SERVER, k * 1000 + 10, k * 1000 + 20)
    fleet.span("a", "internal", INTERNAL, 100, 3900)  # not a request: not in flight
    records, _, _ = run(fleet.export())
    assert [rec(records, "a", k)["in_flight"] for k in range(4)] == [2, 2, 1, 0]


# ------------------------------------------------------------------------------- calls
def test_call_edge_from_a_client_span_to_the_server_span_of_another_service():
    fleet = Fleet()
    root = fleet.start("frontend", "GET /", SERVER, 0)
    client = fleet.start("frontend", "POST /pay", CLIENT, 10, parent=root,
                         attrs={"server.address": "10.0.0.7", "server.port": 8080})
    fleet.span("payments", "POST /pay", SERVER, 15, 45, parent=client, error=True)
    client.set_status(Status(StatusCode.ERROR))
    client.end(end_time=at(50))
    root.end(end_time=at(60))
    records, dead, _ = run(fleet.export())
    assert dead == []
    assert calls(records) == {("frontend", "payments"): {"dst": "payments", "count": 1, "errors": 1,
                                                         "latency_ms": 40.0}}  # the client span's
    assert rec(records, "payments")["request_count"] == 1
    assert rec(records, "payments")["error_rate"] == 1.0
    assert rec(records, "frontend")["request_count"] == 1
    assert rec(records, "frontend")["latency_p50_ms"] == 60.0


def test_callee_child_arriving_before_or_after_its_client_span_gives_the_same_edge():
    fleet = Fleet()
    client = fleet.start("a", "GET", CLIENT, 0)
    fleet.span("b", "GET", SERVER, 5, 10, parent=client)
    client.end(end_time=at(20))
    spans = fleet.finished()
    child_first, _, _ = run(encode_spans(spans[:1]), encode_spans(spans[1:]))
    parent_first, _, _ = run(encode_spans(spans[1:]), encode_spans(spans[:1]))
    assert child_first == parent_first
    assert calls(child_first)[("a", "b")]["count"] == 1


@pytest.mark.parametrize(("attrs", "dst"), [
    ({"service.peer.name": "payments"}, "payments"),
    ({"peer.service": "ledger"}, "ledger"),  # deprecated spelling
    ({"server.address": "api.example.com", "server.port": 443}, "api.example.com:443"),
    ({"server.address": "api.example.com"}, "api.example.com"),
    ({"service.peer.name": "payments", "server.address": "10.1.1.1"}, "payments"),
    ({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "researcher",
      "server.address": "10.1.1.1"}, "researcher"),  # a CLIENT invoke_agent names the remote agent
])
def test_uninstrumented_callee_named_by_client_span_attributes(attrs, dst):
    fleet = Fleet()
    fleet.span("a", "call", CLIENT, 0, 30, attrs=attrs)
    records, _, _ = run(fleet.export())
    assert calls(records) == {("a", dst): {"dst": dst, "count": 1, "errors": 0, "latency_ms": 30.0}}
    assert rec(records, "a")["request_count"] == 0


def test_client_span_without_a_callee_or_to_itself_is_no_call():
    fleet = Fleet()
    fleet.span("a", "call", CLIENT, 0, 30, attrs={"http.request.method": "GET"})
    fleet.span("a", "self", CLIENT, 0, 30, attrs={"service.peer.name": "a"})
    c = fleet.start("a", "loop", CLIENT, 0)
    fleet.span("a", "GET", SERVER, 1, 2, parent=c)  # a calls itself over HTTP
    c.end(end_time=at(3))
    records, _, _ = run(fleet.export())
    assert calls(records) == {}
    assert rec(records, "a")["request_count"] == 1


def test_each_client_call_counts_once_and_calls_aggregate_per_callee():
    fleet = Fleet()
    root = fleet.start("a", "GET", SERVER, 0)
    for i, (dur, err) in enumerate([(10, False), (30, True), (20, False)]):
        c = fleet.start("a", "call", CLIENT, 100 * i, parent=root,
                        attrs={"service.peer.name": "b", "server.address": "b.internal"})
        srv = fleet.start("b", "GET", SERVER, 100 * i + 1, parent=c)
        fleet.span("b", "work", INTERNAL, 100 * i + 2, 100 * i + 3, parent=srv)
        fleet.span("b", "retry", SERVER, 100 * i + 4, 100 * i + 5, parent=c)  # a second child
        srv.end(end_time=at(100 * i + dur - 1))
        if err:
            c.set_status(Status(StatusCode.ERROR))
        c.end(end_time=at(100 * i + dur))
    root.end(end_time=at(400))
    records, _, _ = run(fleet.export())
    assert calls(records) == {("a", "b"): {"dst": "b", "count": 3, "errors": 1, "latency_ms": 20.0}}
    assert rec(records, "b")["request_count"] == 6


def test_call_is_in_the_callers_record_at_the_client_spans_end_second():
    fleet = Fleet()
    c = fleet.start("a", "call", CLIENT, 900)
    fleet.span("b", "GET", SERVER, 950, 990, parent=c)  # second 0
    c.end(end_time=at(1200))  # second 1
    records, _, _ = run(fleet.export())
    assert rec(records, "a", 1)["calls"][0]["dst"] == "b"
    assert rec(records, "b", 0)["calls"] == []
    assert {r["ts"] for r in records if r["agent_id"] == "a"} == {sec(1)}


def test_in_process_invoke_agent_spans_are_requests_and_calls():
    fleet = Fleet()
    server = fleet.start("fleet", "POST /chat", SERVER, 0)
    sup = fleet.start("fleet", "invoke_agent supervisor", INTERNAL, 1, parent=server,
                      attrs={**INVOKE, "gen_ai.agent.name": "supervisor"})
    res = fleet.start("fleet", "invoke_agent researcher", INTERNAL, 2, parent=sup,
                      attrs={**INVOKE, "gen_ai.agent.name": "researcher"})
    fleet.span("fleet", "execute_tool search", INTERNAL, 3, 8, parent=res,
               attrs={"gen_ai.operation.name": "execute_tool", "gen_ai.agent.name": "researcher"})
    fleet.span("fleet", "invoke_agent researcher", INTERNAL, 9, 12, parent=res,  # nested: same agent
               attrs={**INVOKE, "gen_ai.agent.name": "researcher"})
    res.set_status(Status(StatusCode.ERROR))
    res.end(end_time=at(40))
    sup.end(end_time=at(50))
    server.end(end_time=at(60))
    records, dead, _ = run(fleet.export())
    assert dead == []
    assert [(r["agent_id"], r["request_count"]) for r in records] == \
        [("fleet", 1), ("researcher", 1), ("supervisor", 1)]
    assert calls(records) == {
        ("fleet", "supervisor"): {"dst": "supervisor", "count": 1, "errors": 0, "latency_ms": 49.0},
        ("supervisor", "researcher"): {"dst": "researcher", "count": 1, "errors": 1, "latency_ms": 38.0}}
    assert rec(records, "researcher")["error_rate"] == 1.0


def test_invoke_agent_under_its_own_agents_server_span_is_one_request():
    fleet = Fleet()
    server = fleet.start("planner", "POST /invoke", SERVER, 0)
    fleet.span("planner", "invoke_agent planner", INTERNAL, 1, 20, parent=server,
               attrs={**INVOKE, "gen_ai.agent.name": "planner"})
    server.end(end_time=at(25))
    records, _, _ = run(fleet.export())
    [r] = records
    assert (r["agent_id"], r["request_count"], r["latency_p50_ms"], r["calls"]) == ("planner", 1, 25.0, [])


def test_root_invoke_agent_span_is_a_request():
    fleet = Fleet()
    fleet.span("batch", "invoke_agent summarizer", INTERNAL, 0, 70,
               attrs={**INVOKE, "gen_ai.agent.name": "summarizer"})
    records, _, _ = run(fleet.export())
    assert [(r["agent_id"], r["request_count"]) for r in records] == [("summarizer", 1)]


def test_server_span_under_a_non_client_parent_of_another_service_is_a_call():
    """Context propagated by an uninstrumented HTTP client: no client span, the edge comes from
    the parent/child pair, with the child's duration."""
    fleet = Fleet()
    job = fleet.start("scheduler", "run", INTERNAL, 0)
    fleet.span("indexer", "POST /index", SERVER, 10, 35, parent=job)
    job.end(end_time=at(2500))  # the parent ends two seconds later
    records, _, _ = run(fleet.export())
    assert calls(records) == {("scheduler", "indexer"): {"dst": "indexer", "count": 1, "errors": 0,
                                                         "latency_ms": 25.0}}
    assert rec(records, "scheduler", 0)["request_count"] == 0  # the call is at the child's second
    assert rec(records, "scheduler", 2)["calls"] == []


def test_long_in_process_parent_arriving_after_its_childs_second_was_sealed():
    """A supervisor span ends 30 s after the sub-agent it invoked: the child's second is sealed
    by then (the child counted as a request), the edge lands in the parent's second."""
    fleet = Fleet()
    agg = SpanAggregator(grace_s=2.0)
    sup = fleet.start("fleet", "invoke_agent supervisor", INTERNAL, 0,
                      attrs={**INVOKE, "gen_ai.agent.name": "supervisor"})
    fleet.span("fleet", "invoke_agent worker", INTERNAL, 10, 400, parent=sup,
               attrs={**INVOKE, "gen_ai.agent.name": "worker"})
    agg.add(fleet.export(), "r0")
    fleet.span("fleet", "tick", INTERNAL, 9000, 9001)  # moves the watermark past second 0
    agg.add(fleet.export(), "r1")
    early = agg.seal().records
    assert [(r["agent_id"], r["ts"], r["request_count"]) for r in early] == [("worker", sec(0), 1)]
    sup.end(end_time=at(30_000))
    agg.add(fleet.export(), "r2")
    late = agg.flush().records
    assert calls(late) == {("supervisor", "worker"): {"dst": "worker", "count": 1, "errors": 0,
                                                       "latency_ms": 390.0}}
    assert rec(late, "supervisor", 30)["request_count"] == 1
    assert reconciled(agg) and agg.counts["spans_dead_total"] == 0


def test_span_index_memory_stays_bounded():
    fleet = Fleet()
    agg = SpanAggregator(grace_s=1.0, retain_s=3.0, wait_s=3.0)
    records = []
    for k in range(40):
        root = fleet.start("a", "GET", SERVER, k * 1000)
        for i in range(10):
            c = fleet.start("a", "call", CLIENT, k * 1000 + i * 50, parent=root)
            fleet.span("b", "GET", SERVER, k * 1000 + i * 50 + 1, k * 1000 + i * 50 + 20, parent=c)
            c.end(end_time=at(k * 1000 + i * 50 + 30))
        root.end(end_time=at(k * 1000 + 900))
        agg.add(fleet.export(), f"r{k}")
        records += agg.seal().records
    st_ = agg._tenants["default"]
    indexed = len(st_.index) + len(st_.index_old)
    assert indexed <= 21 * (2 * 3 + 1 + 2)  # spans of at most 2 retain periods + grace + open seconds
    assert len(st_.waiting) + len(st_.waiting_old) == 0
    records += agg.flush().records
    assert sum(c["count"] for r in records for c in r["calls"]) == 10 * 40
    assert sum(r["request_count"] for r in records) == 11 * 40
    assert reconciled(agg) and agg.counts["spans_dead_total"] == 0


# ------------------------------------------------------------------ tenants, dead letters
def test_tenant_from_resource_attribute_then_argument_then_default():
    fleet = Fleet()
    fleet.span("a", "GET", SERVER, 0, 10, resource={"aura.tenant": "acme"})
    fleet.span("b", "GET", SERVER, 0, 10)
    req = fleet.export()
    agg = SpanAggregator(default_tenant="fallback")
    agg.add(req, "r1", tenant="header-tenant")
    agg.add(req, "r2")
    records = agg.flush().records
    assert sorted((r["tenant"], r["agent_id"], r["request_count"]) for r in records) == [
        ("acme", "a", 1), ("fallback", "b", 1), ("header-tenant", "b", 1)]
    assert agg.counts["spans_dead"] == {"duplicate_span": 1}  # a's span, twice in tenant acme


def test_invalid_tenant_and_missing_service_name_are_dead_letters():
    fleet = Fleet()
    fleet.span("a", "GET", SERVER, 0, 10, resource={"aura.tenant": "bad tenant!"})
    fleet.span(None, "GET", SERVER, 0, 10)  # a resource without service.name
    fleet.span(None, "invoke_agent x", INTERNAL, 0, 10, attrs={**INVOKE, "gen_ai.agent.name": "x"})
    req = fleet.export()
    records, dead, agg = run(req)
    assert [r["agent_id"] for r in records] == ["x"]
    assert sorted(d.reason for d in dead) == ["invalid_tenant", "missing_service_name"]
    by_reason = {d.reason: d for d in dead}
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    for d in dead:
        assert d.source == "req0" and d.detail
        assert PbSpan.FromString(d.raw) == spans[d.position]
    assert by_reason["invalid_tenant"].raw == spans[0].SerializeToString()
    assert agg.counts["spans_dead"] == {"invalid_tenant": 1, "missing_service_name": 1}


def test_default_tenant_must_match_the_contract():
    with pytest.raises(ValueError):
        SpanAggregator(default_tenant="no spaces allowed")


def mutate(req: ExportTraceServiceRequest, fn) -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    out.CopyFrom(req)
    fn(out.resource_spans[0].scope_spans[0].spans[0])
    return out


@pytest.mark.parametrize(("change", "reason"), [
    (lambda s: setattr(s, "end_time_unix_nano", s.start_time_unix_nano - 1), "invalid_span_time"),
    (lambda s: setattr(s, "start_time_unix_nano", 0), "invalid_span_time"),
    (lambda s: (setattr(s, "start_time_unix_nano", 0), setattr(s, "end_time_unix_nano", 0)),
     "invalid_span_time"),
    (lambda s: setattr(s, "span_id", b""), "invalid_span_id"),
    (lambda s: setattr(s, "span_id", bytes(8)), "invalid_span_id"),
    (lambda s: setattr(s, "trace_id", b"\x01" * 15), "invalid_trace_id"),
])
def test_invalid_spans_are_dead_letters(change, reason):
    fleet = Fleet()
    fleet.span("a", "GET", SERVER, 0, 10)
    fleet.span("a", "GET", SERVER, 20, 30)
    records, dead, agg = run(mutate(fleet.export(), change))
    assert [(d.reason, d.position) for d in dead] == [(reason, 0)]
    assert rec(records, "a")["request_count"] == 1
    assert agg.counts["spans_in_records"] == 1


def test_seal_by_watermark_late_spans_and_pending_sources():
    fleet = Fleet()
    agg = SpanAggregator(grace_s=2.0)
    fleet.span("a", "GET", SERVER, 100, 500)  # second 0
    agg.add(fleet.export(), "r0")
    fleet.span("a", "GET", SERVER, 2900, 3100)  # second 3: watermark 1.1 s
    agg.add(fleet.export(), "r1")
    assert agg.watermark("default") == pytest.approx(int(T0) + 1.1)
    assert agg.pending_sources() == {"r0", "r1"}
    res = agg.seal()
    assert [(r["ts"], r["request_count"]) for r in res.records] == [(sec(0), 1)]
    assert agg.pending_sources() == {"r1"}
    assert agg.counts["spans_pending"] == 1 and reconciled(agg)
    fleet.span("a", "GET", SERVER, 600, 900)  # second 0 again: sealed
    fleet.span("a", "GET", SERVER, 1000, 1500)  # second 1: still open
    agg.add(fleet.export(), "r2")
    res = agg.seal()
    assert res.records == []
    assert [(d.reason, d.source, d.position) for d in res.dead] == [("late_span", "r2", 0)]
    assert reconciled(agg)
    res = agg.flush()
    assert [(r["ts"], r["request_count"]) for r in res.records] == [(sec(1), 1), (sec(3), 1)]
    assert agg.counts == {"requests": 3, "spans_received": 4, "spans_in_records": 3,
                          "spans_dead": {"late_span": 1}, "spans_dead_total": 1, "spans_pending": 0,
                          "records_produced": 3}
    assert agg.pending_sources() == set()


def test_receive_time_guards_the_watermark_and_seals_idle_tenants():
    fleet = Fleet()
    agg = SpanAggregator(grace_s=2.0, idle_s=5.0, max_ahead_s=60.0)
    fleet.span("a", "GET", SERVER, 100, 200, resource={"aura.tenant": "quiet"})
    agg.add(fleet.export(), "r0", received_s=T0 + 1)
    fleet.span("b", "GET", SERVER, 100, 200)
    fleet.span("b", "GET", SERVER, 100, 3_600_000)  # ends an hour after it was received
    agg.add(fleet.export(), "r1", received_s=T0 + 2)
    assert [d.reason for d in agg.seal().dead] == ["span_in_future"]
    fleet.span("b", "GET", SERVER, 9000, 9100)
    agg.add(fleet.export(), "r2", received_s=T0 + 10)
    sealed = agg.seal().records  # "quiet" sent nothing for 9 s > idle_s: sealed too
    assert [(r["tenant"], r["ts"]) for r in sealed] == [("default", sec(0)), ("quiet", sec(0))]


def test_same_spans_same_order_same_records():
    fleet = Fleet()
    root = fleet.start("a", "GET", SERVER, 0)
    for i in range(20):
        c = fleet.start("a", "call", CLIENT, 50 * i, parent=root)
        fleet.span(f"s{i % 3}", "GET", SERVER, 50 * i + 1, 50 * i + 40, parent=c, error=i % 4 == 0)
        c.end(end_time=at(50 * i + 45))
    root.end(end_time=at(1500))
    reqs = [encode_spans(chunk) for chunk in np.array_split(np.array(fleet.finished(), dtype=object), 5)]
    first, _, _ = run(*reqs)
    second, _, _ = run(*reqs)
    assert first == second
    assert {c["dst"]: c["count"] for c in rec(first, "a", 0)["calls"]} == {"s0": 7, "s1": 7, "s2": 6}


# --------------------------------------------------------------- property: random span sets
_KINDS = [SERVER, CLIENT, INTERNAL, SpanKind.CONSUMER, SpanKind.PRODUCER]
_node = st.tuples(st.integers(0, 2),  # service
                  st.integers(0, 4),  # kind
                  st.sampled_from([None, "alpha", "beta"]),  # gen_ai.agent.name
                  st.booleans(),  # invoke_agent (INTERNAL)
                  st.booleans(),  # error
                  st.integers(0, 2500),  # start offset from the parent (ms)
                  st.integers(0, 2500),  # duration (ms)
                  st.sampled_from([None, "peer", "addr"]))  # client span's callee attribute


@st.composite
def span_forests(draw):
    nodes = draw(st.lists(_node, min_size=1, max_size=25))
    parents = [draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None for i in range(len(nodes))]
    return nodes, parents


def build_forest(fleet: Fleet, nodes, parents):
    """SDK spans for the forest, and the number of request spans and calls the mapping must find."""
    made, starts, agents, kinds = [], [], [], []
    for (svc, k, gen_agent, invoke, error, offset, *_), parent in zip(nodes, parents, strict=True):
        kind = _KINDS[k]
        attrs = {}
        if gen_agent and kind not in (CLIENT, SpanKind.PRODUCER):
            attrs["gen_ai.agent.name"] = gen_agent
        if invoke and kind == INTERNAL:
            attrs["gen_ai.operation.name"] = "invoke_agent"
        start = (starts[parent] if parent is not None else 0) + offset
        sp = fleet.start(f"svc{svc}", "op", kind, start, made[parent] if parent is not None else None, attrs)
        if error:
            sp.set_status(Status(StatusCode.ERROR))
        made.append(sp)
        starts.append(start)
        agents.append(attrs.get("gen_ai.agent.name", f"svc{svc}"))
        kinds.append(kind)
    n_requests = n_calls = 0
    for i, (node, parent) in enumerate(zip(nodes, parents, strict=True)):
        peer = node[7]
        if kinds[i] in (CLIENT, SpanKind.PRODUCER):
            if peer == "peer":
                made[i].set_attribute("service.peer.name", "ext-peer")
            elif peer == "addr":
                made[i].set_attribute("server.address", "10.0.0.1")
        made[i].end(end_time=at(starts[i] + node[6]))
        is_request = kinds[i] in (SERVER, SpanKind.CONSUMER) or (
            kinds[i] == INTERNAL and node[3] and (parent is None or agents[parent] != agents[i]))
        n_requests += is_request
        if parent is not None and is_request and agents[parent] != agents[i] \
                and kinds[parent] not in (CLIENT, SpanKind.PRODUCER):
            n_calls += 1
    for i in range(len(nodes)):
        if kinds[i] in (CLIENT, SpanKind.PRODUCER):
            kids = [j for j, p in enumerate(parents) if p == i and agents[j] != agents[i]]
            n_calls += bool(kids) or nodes[i][7] is not None
    return n_requests, n_calls


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forest=span_forests(), seed=st.integers(0, 2**32 - 1), n_batches=st.integers(1, 6))
def test_random_span_sets_reconcile_and_map_every_request_and_call(forest, seed, n_batches):
    fleet = Fleet()
    n_requests, n_calls = build_forest(fleet, *forest)
    spans = fleet.finished()
    random.Random(seed).shuffle(spans)
    cuts = sorted(random.Random(seed + 1).sample(range(1, len(spans)), min(n_batches, len(spans)) - 1))
    batches = [spans[a:b] for a, b in zip([0, *cuts], [*cuts, len(spans)], strict=True)]
    records, dead, agg = run(*(encode_spans(b) for b in batches))
    assert dead == []
    assert agg.counts["spans_in_records"] == len(spans)
    assert sum(r["request_count"] for r in records) == n_requests
    assert sum(c["count"] for r in records for c in r["calls"]) == n_calls


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forest=span_forests(), seed=st.integers(0, 2**32 - 1), grace=st.sampled_from([0.0, 0.5, 2.0]))
def test_random_arrival_with_sealing_in_between_always_reconciles(forest, seed, grace):
    fleet = Fleet()
    build_forest(fleet, *forest)
    spans = fleet.finished()
    rnd = random.Random(seed)
    rnd.shuffle(spans)
    agg = SpanAggregator(grace_s=grace, retain_s=1.0, wait_s=1.0)
    records = []
    for i in range(0, len(spans), 3):
        agg.add(encode_spans(spans[i:i + 3]), f"r{i}")
        if rnd.random() < 0.5:
            records += agg.seal().records
            assert reconciled(agg)
    records += agg.flush().records
    c = agg.counts
    assert reconciled(agg) and c["spans_pending"] == 0 and c["spans_received"] == len(spans)
    assert set(c["spans_dead"]) <= {"late_span"}
    assert c["records_produced"] == len(records)
    assert_valid(records)


def test_reason_codes_are_exported():
    assert {sm.LATE_SPAN, sm.INVALID_SPAN_TIME, sm.MISSING_SERVICE_NAME, sm.INVALID_TENANT} == \
        {"late_span", "invalid_span_time", "missing_service_name", "invalid_tenant"}
