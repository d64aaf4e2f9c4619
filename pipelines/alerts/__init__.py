"""Alerts from committed verdicts: a per-tenant state machine (``policy``, ``tracker``),
delivery to Alertmanager's v2 API and webhooks with spill and replay (``alertmanager``), the
service that watches a run's outputs (``service``), incident records (``incidents``) and a
real Alertmanager child process for tests and demos (``alertmanager_server``)."""

from pipelines.alerts.alertmanager import AlertmanagerSink, Delivery, WebhookSink
from pipelines.alerts.incidents import get_incident, list_incidents
from pipelines.alerts.policy import AlertEvent, AlertPolicy, Incident, Verdict
from pipelines.alerts.service import AlertService, build_service

__all__ = ["AlertEvent", "AlertPolicy", "AlertService", "AlertmanagerSink", "Delivery", "Incident",
           "Verdict", "WebhookSink", "build_service", "get_incident", "list_incidents"]
