"""OTLP/gRPC traces (``TraceService/Export``, port 4317 by default) into the same spool as
``POST /v1/traces``: the answer comes once the request is on disk. The tenant comes from the
``x-aura-tenant`` metadata (else the default; the ``aura.tenant`` resource attribute still
wins, as over HTTP). A full spool answers RESOURCE_EXHAUSTED (exporters retry it), a bad
tenant INVALID_ARGUMENT; gRPC's own message size limit is ``max_body_bytes``."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from pipelines.service.routers.ingest import Refused, check_backlog, spool_traces, valid_tenant

_CODES = {429: grpc.StatusCode.RESOURCE_EXHAUSTED, 400: grpc.StatusCode.INVALID_ARGUMENT}


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, state):
        self.state = state

    def Export(self, request, context):  # noqa: N802 - the protocol's name
        state, t0 = self.state, time.perf_counter()
        meta = dict(context.invocation_metadata())
        try:
            tenant = valid_tenant(meta.get("x-aura-tenant", state.api.default_tenant))
            check_backlog(state)
            spool_traces(state, request, tenant)
        except Refused as err:
            state.metrics.rejected.labels("traces_grpc", err.reason).inc()
            state.metrics.requests.labels("traces_grpc", str(err.status)).inc()
            context.abort(_CODES.get(err.status, grpc.StatusCode.INTERNAL), f"{err.reason}: {err.detail}")
        state.metrics.requests.labels("traces_grpc", "200").inc()
        state.metrics.request_seconds.labels("traces_grpc").observe(time.perf_counter() - t0)
        return trace_service_pb2.ExportTraceServiceResponse()


def serve_grpc(state, host: str, port: int, workers: int = 4) -> tuple[grpc.Server, int]:
    """Start the receiver; (server, bound port). Stop with ``server.stop(grace)``."""
    limit = state.api.max_body_bytes
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", limit)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(state), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for OTLP/gRPC on {host}:{port}")
    server.start()
    return server, bound
