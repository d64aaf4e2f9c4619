"""What the streaming job reports about itself, engine-neutral: per-window stage timings and
trace spans, record, verdict and graph counters (docs/OBSERVABILITY.md).

The job runs as a child of ``aura api``, so its metrics go through prometheus-client's
multiprocess mode: they are recorded only when ``PROMETHEUS_MULTIPROC_DIR`` is set (the
service sets it for its job and serves the directory on ``/metrics``); otherwise every call
here costs a dictionary lookup. Spans go through ``pipelines.tracing`` (off unless an OTLP
endpoint is configured). Plain functions over plain values, called by the Beam and Flink
adapters.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator

import orjson

from pipelines import tracing

ENABLED = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
UNKNOWN_TENANT = "unknown"  # a dead letter whose record names no valid tenant
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
_PENDING_MAX = 10_000  # windows fired and waiting for their verdict (oldest forgotten beyond)


class _Metrics:
    """The job's metric objects (created once, in multiprocess mode)."""

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.read = Counter("aura_records_read", "Telemetry records the job read", ["tenant"])
        self.windowed = Counter("aura_records_windowed", "Records that went into a window", ["tenant"])
        self.dead = Counter("aura_records_dead_lettered", "Records dead-lettered, by reason",
                            ["tenant", "reason"])
        self.lag = Gauge("aura_watermark_lag_seconds", "Newest event time read minus the watermark",
                         multiprocess_mode="mostrecent")
        self.verdict_latency = Histogram("aura_window_verdict_latency_seconds", "Wall time from a "
                                         "window's pane firing to its committed verdict written",
                                         buckets=LATENCY_BUCKETS)
        self.stage = Histogram("aura_stage_duration_seconds", "Time per window per stage", ["stage"],
                               buckets=STAGE_BUCKETS)
        self.inference = Histogram("aura_inference_duration_seconds", "One model inference call",
                                   buckets=STAGE_BUCKETS)
        self.commit = Histogram("aura_consensus_commit_duration_seconds", "Proposal to quorum "
                                "certificate, per verdict", buckets=STAGE_BUCKETS)
        self.verdicts = Counter("aura_verdicts", "Verdicts by consensus outcome", ["tenant", "outcome"])
        self.graph = Counter("aura_graph_writes", "Graph writes (one per window and kind), written or "
                             "spilled", ["kind", "outcome"])


_M: _Metrics | None = _Metrics() if ENABLED else None
_fired: OrderedDict[tuple[str, int, int], float] = OrderedDict()
_lock = threading.Lock()


@contextlib.contextmanager
def stage(name: str, tenant: str, window_ms: int, **attributes) -> Iterator[None]:
    """Time one window's pass through a stage (``window``, ``features``, ``predict``,
    ``consensus``, ``graph``, ``sinks``) and trace it as that window's span."""
    with tracing.window_span(name, tenant, window_ms, **attributes):
        if _M is None:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _M.stage.labels(name).observe(time.perf_counter() - t0)


def records(ok: list[dict], dead: list) -> None:
    """A parsed batch: its records that go on to windows, by tenant, and its dead letters."""
    if _M is None:
        return
    for tenant, n in Counter(r["tenant"] for r in ok).items():
        windowed(tenant, n)
    for d in dead:
        dead_lettered(dead_tenant(d.raw), d.reason)


def windowed(tenant: str, n: int) -> None:
    """``n`` records of ``tenant`` went into a window (and so were read)."""
    if _M is not None and n:
        _M.read.labels(tenant).inc(n)
        _M.windowed.labels(tenant).inc(n)


def dead_tenant(raw: bytes | str | None) -> str:
    """The tenant a dead-lettered record names, if it is a valid tenant id; else ``unknown``
    (labels stay bounded whatever the input)."""
    try:
        t = orjson.loads(raw).get("tenant") if raw else None
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return UNKNOWN_TENANT
    return t if isinstance(t, str) and _tenant_re().fullmatch(t) else UNKNOWN_TENANT


@functools.cache
def _tenant_re() -> re.Pattern:
    from schemas import tenant_pattern

    return re.compile(tenant_pattern())


def dead_lettered(tenant: str, reason: str, n: int = 1) -> None:
    """``n`` records dead-lettered with ``reason`` (and so read)."""
    if _M is not None and n:
        _M.read.labels(tenant).inc(n)
        _M.dead.labels(tenant, reason).inc(n)


def watermark(newest_event_s: float | None, watermark_s: float | None) -> None:
    if _M is not None and newest_event_s is not None and watermark_s is not None:
        _M.lag.set(max(0.0, newest_event_s - watermark_s))


def window_fired(tenant: str, window_ms: int, pane: int) -> None:
    """A window's pane fired now: its verdict latency counts from here."""
    if _M is None:
        return
    with _lock:
        _fired[(tenant, window_ms, pane)] = time.monotonic()
        while len(_fired) > _PENDING_MAX:
            _fired.popitem(last=False)


def verdict_written(tenant: str, window_ms: int, pane: int, committed: bool) -> None:
    """A window's verdict is on disk: its latency since firing, and the consensus outcome."""
    if _M is None:
        return
    with _lock:
        fired = _fired.pop((tenant, window_ms, pane), None)
    if fired is not None:
        _M.verdict_latency.observe(time.monotonic() - fired)
    if committed:
        _M.verdicts.labels(tenant, "committed").inc()


def disputed(tenant: str, window_ms: int, pane: int) -> None:
    if _M is None:
        return
    with _lock:
        _fired.pop((tenant, window_ms, pane), None)
    _M.verdicts.labels(tenant, "disputed").inc()


def inference(seconds: float) -> None:
    if _M is not None:
        _M.inference.observe(seconds)


def graph_write(kind: str, written: bool) -> None:
    """One window's ``kind`` (snapshot, topology, prediction) written to the graph or spilled."""
    if _M is not None:
        _M.graph.labels(kind, "written" if written else "spilled").inc()


def block(name: str, windows: list[tuple[str, int]], start_ns: int, end_ns: int) -> None:
    """A stage that handled a block of windows at once (consensus): each window's span and
    stage time is the block's; for consensus also the commit latency."""
    for tenant, window_ms in windows:
        tracing.record_span(name, tenant, window_ms, start_ns, end_ns)
    if _M is not None:
        seconds = (end_ns - start_ns) / 1e9
        for _ in windows:
            _M.stage.labels(name).observe(seconds)
            if name == "consensus":
                _M.commit.observe(seconds)
