"""The service's Prometheus metrics (``aura_<thing>_<unit>``), in a registry of its own.

Counters the service increments itself, plus values read at scrape time from the spool
worker's ledger, the streaming job's outputs and the alert service. Labels stay bounded:
tenant (the fleets served), route, status code class, reason codes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pipelines.calibration import OK, STATUSES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("aura_ingest_requests", "Ingest requests by route and status code",
                                ["route", "code"], registry=r)
        self.request_seconds = Histogram("aura_ingest_request_duration_seconds",
                                         "Ingest request latency", ["route"], buckets=LATENCY_BUCKETS,
                                         registry=r)
        self.spans = Counter("aura_spans_received", "OTLP spans accepted (on disk)", ["tenant"], registry=r)
        self.lines = Counter("aura_telemetry_lines_received", "Native telemetry lines accepted (on disk)",
                             registry=r)
        self.rejected = Counter("aura_ingest_rejected", "Requests refused, by reason", ["route", "reason"],
                                registry=r)
        self.backlog = Gauge("aura_spool_backlog_files", "Spooled OTLP requests not yet aggregated",
                             registry=r)

    def add_job_metrics(self, path: str) -> None:
        """The streaming job's metrics: prometheus-client multiprocess files under ``path``
        (``pipelines.observe``), summed over every job process of this service."""
        from prometheus_client.multiprocess import MultiProcessCollector

        os.makedirs(path, exist_ok=True)
        MultiProcessCollector(self.registry, path=path)

    def add_source(self, collect: Callable[[], list]) -> None:
        """Metric families computed at scrape time by ``collect``."""

        class _Source:
            def collect(self):
                return collect()

        self.registry.register(_Source())


def reset_metrics_dir(path: str) -> None:
    """An empty directory for the job's multiprocess metric files."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def ledger_families(ledger: dict) -> list:
    """The spool worker's cumulative counts as metric families."""
    dead = CounterMetricFamily("aura_spans_dead_lettered", "Spans dead-lettered by reason", labels=["reason"])
    for reason, n in sorted(ledger["spans_dead"].items()):
        dead.add_metric([reason], n)
    out = [dead]
    for name, key, doc in (("aura_spans_in_records", "spans_in_records", "Spans aggregated into records"),
                           ("aura_telemetry_records_landed", "records_landed",
                            "Telemetry records landed for the streaming job")):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], ledger[key])
        out.append(c)
    pending = GaugeMetricFamily("aura_spans_pending", "Spans in seconds not yet sealed")
    pending.add_metric([], ledger["spans_pending"])
    return out + [pending]


def risk_family(verdicts: dict[str, dict | None]) -> list:
    """The latest committed risk per tenant, and its verdict status (one series per status,
    1 for the latest verdict's: a risk whose status is not ok is not trusted)."""
    g = GaugeMetricFamily("aura_tenant_risk", "Probability of a cascade within the horizon (latest "
                          "committed verdict)", labels=["tenant"])
    s = GaugeMetricFamily("aura_tenant_verdict_status", "Status of the latest committed verdict (1 for "
                          "its status): ok, calibrating, out_of_distribution", labels=["tenant", "status"])
    for tenant, v in sorted(verdicts.items()):
        if v is not None:
            g.add_metric([tenant], v["probability"])
            for status in STATUSES:
                s.add_metric([tenant, status], float(v.get("status", OK) == status))
    return [g, s]


def restart_families(restarts: dict[str, int]) -> list:
    """How often the service started a child again after it died, by child."""
    c = CounterMetricFamily("aura_service_child_restarts", "Children of the service started again "
                            "after they died, by child", labels=["child"])
    for child in ("spool-worker", "job", "graph"):
        c.add_metric([child], restarts.get(child, 0))
    n = sum(v for k, v in restarts.items() if k.startswith("validator-"))
    c.add_metric(["validator"], n)  # one series for all validators: bounded labels
    return [c]
