"""A minimal real OTLP/HTTP trace receiver for tests: a thread serving ``POST /v1/traces``
on 127.0.0.1 (a free port), decoding ``ExportTraceServiceRequest`` protobuf (gzip too) with
``opentelemetry-proto`` and keeping every span as a flat ``ReceivedSpan``."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
         Span.SPAN_KIND_INTERNAL: "internal", Span.SPAN_KIND_PRODUCER: "producer",
         Span.SPAN_KIND_CONSUMER: "consumer"}


def _value(v: AnyValue):
    which = v.WhichOneof("value")
    return getattr(v, which) if which in ("string_value", "int_value", "double_value", "bool_value") else None


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # server | client | internal | ...
    service: str
    instance: str | None  # the resource's service.instance.id
    tenant: str | None  # the resource's aura.tenant, else the request's X-Aura-Tenant
    attributes: dict
    error: bool
    start_ns: int
    end_ns: int


class OTLPReceiver:
    """``with OTLPReceiver() as rx: ... rx.endpoint ... rx.spans()``."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.rejected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self._answer(404, b"")
                    return
                try:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    req = ExportTraceServiceRequest.FromString(body)
                except Exception:  # noqa: BLE001 - any undecodable body is a 400
                    with receiver._lock:
                        receiver.rejected += 1
                    self._answer(400, b"undecodable")
                    return
                receiver._keep(req, self.headers.get("X-Aura-Tenant"))
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, code: int, payload: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _keep(self, req: ExportTraceServiceRequest, header_tenant: str | None) -> None:
        out = []
        for rs in req.resource_spans:
            res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append(ReceivedSpan(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), name=s.name,
                        kind=KINDS.get(s.kind, "unspecified"), service=res.get("service.name", ""),
                        instance=res.get("service.instance.id"),
                        tenant=res.get("aura.tenant") or header_tenant,
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        error=s.status.code == Status.STATUS_CODE_ERROR,
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano))
        with self._lock:
            self.requests += 1
            self._spans.extend(out)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def wait_quiet(self, quiet_s: float = 1.0, timeout_s: float = 10.0) -> int:
        """Wait until no span arrived for ``quiet_s``; the number of spans held."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = len(self.spans())
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.1)
        return last

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
