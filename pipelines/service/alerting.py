"""The alert service inside ``aura api``: committed verdicts in the job's outputs -> alerts in
Alertmanager (and an optional webhook), incidents under ``run/incidents``, and the incident
workflow acting on them (``run/incidents.sqlite``; ``--actuator``, ``--approve-above``)."""

from __future__ import annotations

import os

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pipelines.alerts.service import AlertService, build_service
from pipelines.config import ApiConfig, RunConfig
from pipelines.service.fleet_metrics import interventions_family

# counters that are levels, not totals
_GAUGES = {"incidents_open", "spill_pending", "tenants", "last_poll_ms", "files_waiting_features"}


class ServiceAlerts:
    """A running ``AlertService`` with its metrics."""

    def __init__(self, service: AlertService):
        self.service = service

    def stop(self) -> None:
        self.service.stop()

    def metric_families(self) -> list:
        out = []
        for name, value in sorted(self.service.counters().items()):
            if name in _GAUGES:
                g = GaugeMetricFamily(f"aura_alerts_{name}", f"alert service: {name.replace('_', ' ')}")
                g.add_metric([], value)
                out.append(g)
            else:
                c = CounterMetricFamily(f"aura_alerts_{name}", f"alert service: {name.replace('_', ' ')}")
                c.add_metric([], value)
                out.append(c)
        held = CounterMetricFamily("aura_alerts_held_back", "alert service: committed verdicts held back "
                                   "(the model is unsure: opens, escalates and resolves nothing), by reason",
                                   labels=["reason"])
        for reason, n in sorted(self.service.held_back().items()):
            held.add_metric([reason], n)
        acts = CounterMetricFamily("aura_alerts_interventions", "incident workflow: interventions issued, "
                                   "by kind and delivery status", labels=["kind", "status"])
        for (kind, status), n in sorted(self.service.interventions().items()):
            acts.add_metric([kind, status], n)
        return [*out, held, acts, *interventions_family(self.service.interventions_by_tenant())]


def start_alerts(api: ApiConfig, run: RunConfig, log) -> ServiceAlerts:
    """Start watching ``run.out``; alerts stay local (incident records) without a sink URL."""
    from pipelines.alerts.workflow_feed import default_actuator

    actuator = api.actuator or default_actuator(run.out)
    svc = build_service(run.out, alertmanager_url=api.alertmanager_url, webhook_url=api.alert_webhook_url,
                        external_url=api.url, risk_bands=run.risk_bands,
                        resolve_windows=api.alert_resolve_windows, resend_interval_s=api.alert_resend_s,
                        latency_ref_ms=run.latency_ref_ms, timeout_ms=run.timeout_ms, actuator=actuator,
                        approve_above=api.approve_above, model_dir=run.model_dir).start()
    urls = [u for u in (api.alertmanager_url, api.alert_webhook_url) if u]
    sinks = ", ".join(urls) or "none (incidents only)"
    log(f"aura api: alerts from {run.out} to {sinks}")
    if svc.feed is not None:
        db = os.path.join(run.out, "incidents.sqlite")
        log(f"aura api: incident workflow acting through {actuator} (approval above {api.approve_above:g}; "
            f"aura incident --db {db} list)")
    return ServiceAlerts(svc)
