"""Helpers for the alert tests: job-shaped output files written with the real schemas and
writer, verdict sequences, and a webhook receiver (a real HTTP server on a free port)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa

from pipelines.alerts.policy import Verdict
from pipelines.panes import write_pane
from pipelines.predictions import PREDICTION_ROW
from pipelines.telemetry import parse_lines
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.rows import FEATURE_ROW
from pipelines.windowing import build_snapshot, snapshots_to_table
from tests.conftest import T0, line, record

T0_MS = int(T0 * 1000)
SLIDE_MS = 10_000
CERT = json.dumps({"chain": "c0", "height": 1, "view": 1, "block_hash": "ab" * 32, "signers": [0, 1, 2],
                   "signatures": ["00" * 64] * 3})
HEALTHY = {"unhealthy_frac": 0.0, "error_rate_p90": 0.002}
SICK = {"unhealthy_frac": 0.4, "error_rate_p90": 1.0}


def verdict(i: int, p: float, health: dict | None = None, committed: bool = True, pane: int = 0,
            tenant: str = "acme", status: str = "ok", **features) -> Verdict:
    """The verdict of window ``i`` (10 s windows from T0)."""
    f = None if health is None else {**health, **features}
    return Verdict(tenant, T0_MS + i * SLIDE_MS, T0_MS + (i + 1) * SLIDE_MS, p, CERT if committed else None,
                   pane, f, status=status)


def feature_row(tenant: str, start_ms: int, pane: int, **values: float) -> pa.Table:
    row = {"tenant": tenant, "window_start": start_ms, "window_end": start_ms + SLIDE_MS, "pane_index": pane,
           "feature_version": 1, **dict.fromkeys(FeatureExtractor.names(), 0.0)}
    row.update({"retry_ratio": 1.6, "requests_log": 12.2, "reporting_frac": 1.0, "n_agents_log10": 1.3,
                "latency_p99_log_p50": 4.4, **values})
    return pa.Table.from_pylist([row], schema=FEATURE_ROW)


def snapshot_table(tenant: str, start_ms: int, pane: int, sick: tuple[str, ...] = ()) -> pa.Table:
    """A small call graph a -> b -> c, d; agents in ``sick`` fail half their calls."""
    t = start_ms / 1000 + 1
    recs = []
    for agent, dst in (("a", "b"), ("b", "c"), ("b", "d"), ("c", None), ("d", None)):
        calls = [] if dst is None else [{"dst": dst, "count": 20, "errors": 12 if dst in sick else 0,
                                         "latency_ms": 900.0 if dst in sick else 20.0}]
        recs.append(record(agent=agent, t=t, tenant=tenant, calls=calls,
                           error_rate=0.6 if agent in sick else 0.01))
    parsed = parse_lines([line(r) for r in recs], "fixture").records
    snap = build_snapshot(tenant, start_ms / 1000, start_ms / 1000 + SLIDE_MS / 1000, parsed)
    snap.pane_index = pane
    return snapshots_to_table([snap])


def write_window(out_dir: str, i: int, p: float, committed: bool = True, pane: int = 0, tenant: str = "acme",
                 features: dict | None = None, sick: tuple[str, ...] = (), with_features: bool = True,
                 with_prediction: bool = True, status: str | None = "ok") -> str:
    """Snapshot, feature row and prediction of window ``i`` as the streaming job writes them
    (``status`` None: a prediction file from before verdict statuses, without the column)."""
    start = T0_MS + i * SLIDE_MS
    write_pane(out_dir, "snapshots", tenant, start, pane, snapshot_table(tenant, start, pane, sick))
    if with_features:
        write_pane(out_dir, "features", tenant, start, pane,
                   feature_row(tenant, start, pane, **(features or {})))
    if not with_prediction:
        return ""
    row = {"tenant": tenant, "window_start": start, "window_end": start + SLIDE_MS, "pane_index": pane,
           "probability": p, "horizon_s": 60.0, "history_windows": 8, "feature_version": 1,
           "predictor": "fixture", "certificate": CERT if committed else None, "status": status}
    schema = PREDICTION_ROW if status is not None else pa.schema(
        [f for f in PREDICTION_ROW if f.name != "status"])
    return write_pane(out_dir, "predictions", tenant, start, pane, pa.Table.from_pylist([row], schema=schema))


class WebhookReceiver:
    """Collects the JSON bodies POSTed to ``url`` (Alertmanager's webhook notifications)."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.received_at: list[float] = []  # wall time of each body, same order
        self.keys: list[str | None] = []  # each request's Idempotency-Key header, same order
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    receiver.received_at.append(time.time())
                    receiver.keys.append(self.headers.get("Idempotency-Key"))
                    receiver.bodies.append(json.loads(body))
                    receiver.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate, timeout_s: float = 10.0) -> dict:
        """The first body satisfying ``predicate`` (waits for it), else AssertionError."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for body in self.bodies:
                    if predicate(body):
                        return body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching webhook body in {timeout_s} s; got {self.bodies}")
                self.cond.wait(left)


def scrape_alerts(svc) -> str:
    """The alert service's metric families as Prometheus text, as /metrics serves them."""
    from prometheus_client import CollectorRegistry, generate_latest

    from pipelines.service.alerting import ServiceAlerts

    registry = CollectorRegistry()

    class Source:
        def collect(self):
            return ServiceAlerts(svc).metric_families()

    registry.register(Source())
    return generate_latest(registry).decode()


def wait_until(fn, timeout_s: float = 10.0, every_s: float = 0.05):
    """Polls ``fn`` until it returns something truthy; that value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s (last: {value!r})")
        time.sleep(every_s)
