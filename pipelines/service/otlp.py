"""Decode OTLP/HTTP trace exports (protobuf or JSON, optionally gzip) into protobuf messages.

Pure functions, no web framework: the service calls ``decode_traces`` with the request body
and headers and answers 400/413/415 from ``OtlpDecodeError.reason``.

OTLP/JSON differs from protobuf's canonical JSON mapping in one way that matters: trace and
span ids are hex strings, not base64. ``json_format.ParseDict`` would read a 32-character hex
trace id as base64 and silently yield a 24-byte id, so ids are converted to bytes first.
"""

from __future__ import annotations

import base64
import binascii
import zlib

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = frozenset({PROTOBUF, "application/protobuf"})
DEFAULT_MAX_DECOMPRESSED = 32 * 1024 * 1024

# Id fields of spans and links, in OTLP/JSON (lowerCamelCase) and proto field-name spelling.
_SPAN_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_LINK_ID_KEYS = ("traceId", "spanId", "trace_id", "span_id")


class OtlpDecodeError(ValueError):
    """A body that is not an OTLP trace export; ``reason`` is a short code.

    Reasons: ``unsupported_media_type``, ``unsupported_encoding``, ``bad_gzip``, ``too_large``,
    ``bad_protobuf``, ``bad_json``.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (lower case, no parameters)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def gunzip(body: bytes, max_size: int) -> bytes:
    """Decompress gzip (one or more members) without ever holding more than ``max_size + 1``
    decompressed bytes: a gzip bomb fails fast with reason ``too_large``."""
    out = bytearray()
    data = body
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(data, max_size - len(out) + 1)
        except zlib.error as err:
            raise OtlpDecodeError("bad_gzip", f"invalid gzip body: {err}") from err
        if len(out) > max_size:
            raise OtlpDecodeError("too_large", f"gzip body decompresses to more than {max_size} bytes")
        if not d.eof:
            raise OtlpDecodeError("bad_gzip", "truncated gzip body")
        data = d.unused_data
        if not data.strip(b"\x00"):  # trailing zero padding, as gzip.decompress tolerates
            break
    return bytes(out)


def _hex_to_b64(obj: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise OtlpDecodeError("bad_json", f"{where}.{key} must be a hex string")
        try:
            raw = bytes.fromhex(value)
        except ValueError as err:
            raise OtlpDecodeError("bad_json", f"{where}.{key} is not hex: {value[:40]!r}") from err
        obj[key] = base64.b64encode(raw).decode("ascii")


def _list(obj: dict, *keys: str) -> list:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            if not isinstance(value, list):
                raise OtlpDecodeError("bad_json", f"{key} must be an array")
            return value
    return []


def _ids_hex_to_base64(doc: dict) -> None:
    """Rewrite every span/link id of an OTLP/JSON document in place from hex to base64, the
    bytes encoding ``json_format.ParseDict`` expects."""
    for i, rs in enumerate(_list(doc, "resourceSpans", "resource_spans")):
        if not isinstance(rs, dict):
            raise OtlpDecodeError("bad_json", f"resourceSpans[{i}] must be an object")
        for j, ss in enumerate(_list(rs, "scopeSpans", "scope_spans")):
            if not isinstance(ss, dict):
                raise OtlpDecodeError("bad_json", f"resourceSpans[{i}].scopeSpans[{j}] must be an object")
            for k, span in enumerate(_list(ss, "spans")):
                where = f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                if not isinstance(span, dict):
                    raise OtlpDecodeError("bad_json", f"{where} must be an object")
                _hex_to_b64(span, _SPAN_ID_KEYS, where)
                for m, link in enumerate(_list(span, "links")):
                    if not isinstance(link, dict):
                        raise OtlpDecodeError("bad_json", f"{where}.links[{m}] must be an object")
                    _hex_to_b64(link, _LINK_ID_KEYS, f"{where}.links[{m}]")


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON (hex ids; enums as integers or names; unknown fields ignored, as the spec asks)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise OtlpDecodeError("bad_json", f"invalid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise OtlpDecodeError("bad_json", f"expected a JSON object, got {type(doc).__name__}")
    _ids_hex_to_base64(doc)
    req = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as err:
        raise OtlpDecodeError("bad_json", f"not an OTLP trace export: {err}") from err
    return req


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, RecursionError) as err:
        raise OtlpDecodeError("bad_protobuf", f"not an OTLP trace export: {err}") from err
    return req


def decode_traces(body: bytes, content_type: str | None, content_encoding: str | None = None,
                  max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> ExportTraceServiceRequest:
    """An OTLP/HTTP ``POST /v1/traces`` body -> ``ExportTraceServiceRequest``.

    ``content_type``: ``application/x-protobuf`` (or ``application/protobuf``) or
    ``application/json``, parameters ignored. ``content_encoding``: none/``identity`` or
    ``gzip``. Span ids are not validated here (the OTLP spec lets invalid ids decode; the
    span mapping dead-letters them). Raises ``OtlpDecodeError`` with a reason code.
    """
    mtype = media_type(content_type)
    if mtype not in _PROTOBUF_TYPES and mtype != JSON:
        raise OtlpDecodeError("unsupported_media_type",
                              f"content type {content_type!r} is not {PROTOBUF} or {JSON}")
    encoding = (content_encoding or "").strip().lower()
    if encoding == "gzip":
        body = gunzip(body, max_decompressed)
    elif encoding not in ("", "identity"):
        raise OtlpDecodeError("unsupported_encoding",
                              f"content encoding {content_encoding!r} is not gzip or identity")
    elif len(body) > max_decompressed:
        raise OtlpDecodeError("too_large", f"body of {len(body)} bytes exceeds {max_decompressed}")
    return parse_json(body) if mtype == JSON else parse_protobuf(body)


def count_spans(req: ExportTraceServiceRequest) -> int:
    """Number of spans in an export request."""
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def hex_id(raw: bytes) -> str:
    """An id as OTLP/JSON writes it (lower-case hex)."""
    return binascii.hexlify(raw).decode("ascii")
