"""Ingestion: OTLP/HTTP traces at ``POST /v1/traces`` and the native contract at
``POST /v1/telemetry``. A 2xx means the bytes are on disk (fsynced and renamed into the
spool or the landing directory); 413 too large, 415 unknown encoding, 400 undecodable (the
bytes go to the ingest dead letters with the reason), 429 with Retry-After when the spool
backlog is full."""

from __future__ import annotations

import re
import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.concurrency import run_in_threadpool

from pipelines.service.durable import unique_stem, write_durably
from pipelines.service.models import Problem, TelemetryAccepted
from pipelines.service.otlp import OtlpDecodeError, count_spans, decode_traces, gunzip
from schemas import tenant_pattern

router = APIRouter(tags=["ingest"])
_TENANT = re.compile(tenant_pattern())
_PROTOBUF = "application/x-protobuf"
_OK_PROTOBUF = ExportTraceServiceResponse().SerializeToString()


class Refused(Exception):
    """An ingest request refused with an HTTP status and a reason code."""

    def __init__(self, status: int, reason: str, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.retry_after = status, reason, detail, retry_after


_STATUS = {"too_large": 413, "unsupported_media_type": 415, "unsupported_encoding": 415}


def _refused(err: OtlpDecodeError) -> Refused:
    return Refused(_STATUS.get(err.reason, 400), err.reason, str(err))


def refused_response(err: Refused) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
    return JSONResponse(Problem(error=err.reason, detail=err.detail).model_dump(), err.status, headers)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, "too_large", f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "too_large", f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _tenant(request: Request, default: str) -> str:
    return valid_tenant(request.headers.get("x-aura-tenant", default))


def valid_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise Refused(400, "invalid_tenant",
                      f"X-Aura-Tenant {tenant[:80]!r} does not match {_TENANT.pattern}")
    return tenant


def check_backlog(state) -> None:
    """Refuse (429) while the spool holds ``max_backlog_files`` requests."""
    backlog = state.spool.backlog()
    state.metrics.backlog.set(backlog)
    if backlog >= state.api.max_backlog_files:
        raise Refused(429, "backlog_full", f"{backlog} requests wait to be aggregated; retry later",
                      retry_after=state.api.retry_after_s)


def _dead_letter(state, route: str, reason: str, detail: str, body: bytes, headers) -> None:
    """The refused bytes, kept with the reason (``<data>/ingest/deadletter/request-*.ndjson``)."""
    from pipelines.telemetry import DeadLetter

    d = DeadLetter(reason, f"{route}: {detail} (content-type {headers.get('content-type')!r}, "
                   f"content-encoding {headers.get('content-encoding')!r})", route, 0, body)
    write_durably(state.paths.ingest_deadletter, unique_stem("request") + ".ndjson",
                  orjson.dumps(d.to_dict()) + b"\n")


def spool_traces(state, req, tenant: str, encoded: bytes | None = None) -> int:
    """Spool one decoded export request durably (``encoded``: its protobuf bytes, if at hand);
    the number of spans."""
    n = count_spans(req)
    if n:
        state.spool.put(encoded if encoded is not None else req.SerializeToString(), tenant)
        state.metrics.spans.labels(tenant).inc(n)
    return n


async def _ingest(request: Request, route: str, handle) -> Response:
    state = request.app.state.aura
    t0 = time.perf_counter()
    body = b""
    try:
        body = await _body(request, state.api.max_body_bytes)
        check_backlog(state)
        response = await handle(state, body)
    except Refused as err:
        state.metrics.rejected.labels(route, err.reason).inc()
        if err.status == 400:
            await run_in_threadpool(_dead_letter, state, route, err.reason, err.detail, body, request.headers)
        response = refused_response(err)
    state.metrics.requests.labels(route, str(response.status_code)).inc()
    state.metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)
    return response


@router.post("/v1/traces", summary="OTLP/HTTP traces (protobuf or JSON, gzip)",
             responses={400: {"model": Problem}, 413: {"model": Problem}, 415: {"model": Problem},
                        429: {"model": Problem}})
async def traces(request: Request) -> Response:
    """Spans from an OpenTelemetry SDK exporter or Collector: spooled durably, then turned into
    per-agent, per-second telemetry records (``schemas/otlp_mapping.md``)."""
    async def handle(state, body: bytes) -> Response:
        ctype = request.headers.get("content-type")
        tenant = _tenant(request, state.api.default_tenant)
        try:
            req = decode_traces(body, ctype, request.headers.get("content-encoding"),
                                max_decompressed=state.api.max_body_bytes)
        except OtlpDecodeError as err:
            raise _refused(err) from err
        is_plain_pb = (ctype or "").split(";")[0].strip() == _PROTOBUF \
            and not request.headers.get("content-encoding")
        await run_in_threadpool(spool_traces, state, req, tenant, body if is_plain_pb else None)
        if (ctype or "").startswith("application/json"):
            return Response(b"{}", 200, media_type="application/json")
        return Response(_OK_PROTOBUF, 200, media_type=_PROTOBUF)

    return await _ingest(request, "traces", handle)


@router.post("/v1/telemetry", status_code=202, response_model=TelemetryAccepted,
             summary="Native telemetry records (NDJSON, schemas/telemetry.v1.json)",
             responses={400: {"model": Problem}, 413: {"model": Problem}, 429: {"model": Problem}})
async def telemetry(request: Request) -> Response:
    """NDJSON lines of the native contract, landed as one file for the streaming job; a line
    the contract rejects becomes a dead letter there with its reason."""
    async def handle(state, body: bytes) -> Response:
        encoding = (request.headers.get("content-encoding") or "").lower()
        if encoding == "gzip":
            try:
                body = gunzip(body, state.api.max_body_bytes)
            except OtlpDecodeError as err:
                raise _refused(err) from err
        elif encoding not in ("", "identity"):
            raise Refused(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip or none")
        if not body.strip():
            raise Refused(400, "empty_body", "no NDJSON lines in the body")
        if not body.endswith(b"\n"):
            body += b"\n"
        lines = sum(1 for line in body.split(b"\n") if line.strip())
        path = await run_in_threadpool(write_durably, state.paths.landing,
                                       unique_stem("api") + ".ndjson", body)
        state.metrics.lines.inc(lines)
        return JSONResponse(TelemetryAccepted(lines=lines, file=path).model_dump(), 202)

    return await _ingest(request, "telemetry", handle)
