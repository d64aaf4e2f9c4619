"""The alert service: watches a run's outputs, folds each tenant's committed verdicts through
the alert state machine, delivers the alerts and keeps the incident records.

Each poll (``poll_once``; ``start()`` runs it every ``poll_interval_s`` in a thread) reads the
prediction files that are new or changed since the last poll (each file version once), with
their window's feature row (waiting up to ``feature_wait_s`` for it) and snapshot, feeds them
per tenant in window order to a ``TenantTracker`` (later panes and late windows re-fold), and
turns the net change of each incident over the poll into alerts:

- first seen open -> a firing alert (startsAt = now, the service's wall clock);
- kind or mechanism changed (severity/mechanism labels) -> the old label set ended, the new
  one firing (same startsAt);
- resolved or withdrawn -> ended (endsAt = now); reopened -> firing again.

Firing alerts are re-sent every ``resend_interval_s`` with ``endsAt = now + ttl_s`` (default
4 x the re-send interval, as Prometheus does), so Alertmanager keeps them active exactly while
the incident is open. Records go to ``<out>/incidents/tenant=<t>/<id>.json`` with what was
sent; on start the service reloads them, so a restart replaying the same files sends nothing
twice. Failed deliveries are spilled to ``<out>/alerts/spill.ndjson`` and replayed
(``pipelines.alerts.alertmanager.Delivery``). Unreadable prediction files are counted and
dead-lettered to ``<out>/alerts/deadletter.ndjson`` with the reason. With a ``feed``
(``pipelines.alerts.workflow_feed``), each poll's verdicts then go on to the incident workflow,
which acts on them (interventions through its actuator).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipelines.alerts.alertmanager import (
    AlertmanagerSink,
    Delivery,
    WebhookSink,
    alert_labels,
    alert_payload,
    iso,
)
from pipelines.alerts.incidents import all_incidents, write_incident
from pipelines.alerts.outputs import PaneFile, has_features, read_verdict, scan
from pipelines.alerts.policy import ACTIVE, WITHDRAWN, AlertEvent, AlertPolicy, Incident, Verdict
from pipelines.alerts.tracker import HELD_BACK_REASONS, TenantTracker
from pipelines.topology.filtrations import StressFiltration

if TYPE_CHECKING:  # the workflow (LangGraph) is imported only when it is on
    from pipelines.alerts.workflow_feed import WorkflowFeed

log = logging.getLogger("aura.alerts")

ALERTS_DIR = "alerts"
FIRING, ENDED = "firing", "resolved"
TRANSITIONS = ("open", "update", "resolve", "withdraw", "reopen", "open_resolved")
SERVICE_COUNTERS = ("files_processed", "files_unreadable", "polls", "poll_errors", "alert_events",
                    "last_poll_ms", *(f"alerts_{t}" for t in TRANSITIONS))


@dataclass
class _Sent:
    """What the sinks were last told about one incident."""

    labels: dict[str, str]
    starts_at: float
    state: str  # firing | resolved
    payload: dict
    history: list[dict] = field(default_factory=list)  # delivered transitions


class AlertService:
    """Alerts from a run's output directory (module doc). Thread-safe readers."""

    def __init__(self, out_dir: str, policy: AlertPolicy | None = None, sinks: Sequence = (),
                 external_url: str = "http://127.0.0.1:8000", poll_interval_s: float = 0.1,
                 resend_interval_s: float = 60.0, ttl_s: float | None = None, horizon: int = 32,
                 feature_wait_s: float = 2.0, stress: StressFiltration | None = None,
                 spill_path: str | None = None, delivery: Delivery | None = None,
                 clock: Callable[[], float] = time.time, latency_log_size: int = 10_000,
                 feed: WorkflowFeed | None = None):
        if resend_interval_s <= 0 or poll_interval_s <= 0:
            raise ValueError("poll_interval_s and resend_interval_s must be > 0")
        self.out_dir, self.policy = out_dir, policy or AlertPolicy()
        self.external_url, self.poll_interval_s = external_url, poll_interval_s
        self.resend_interval_s = resend_interval_s
        self.ttl_s = ttl_s if ttl_s is not None else 4 * resend_interval_s
        if self.ttl_s <= resend_interval_s:
            raise ValueError(f"ttl_s ({self.ttl_s}) must exceed resend_interval_s ({resend_interval_s}), "
                             f"else Alertmanager resolves firing alerts between re-sends")
        self.horizon, self.feature_wait_s = horizon, feature_wait_s
        self.stress = stress or StressFiltration()
        self.clock, self.feed = clock, feed
        self.alerts_dir = os.path.join(out_dir, ALERTS_DIR)
        self.delivery = delivery or Delivery(
            sinks, spill_path or os.path.join(self.alerts_dir, "spill.ndjson"), refresh=self._refresh)
        self.trackers: dict[str, TenantTracker] = {}
        self.done: dict[str, tuple[int, int]] = {}  # prediction file -> signature processed
        self.latest: dict[tuple[str, str], Incident] = {}
        self.sent: dict[tuple[str, str], _Sent] = {}
        self.written: dict[tuple[str, str], dict] = {}
        self.latencies: collections.deque[dict] = collections.deque(maxlen=latency_log_size)
        self.counts = collections.Counter(dict.fromkeys(SERVICE_COUNTERS, 0))
        self.waiting_features = 0
        self.last_resend = clock()
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reload()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> AlertService:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="aura-alerts", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the thread and closes the sinks (final: build a new service to go on)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.delivery.close()
        if self.feed is not None:
            self.feed.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad poll; counted and logged
                self.counts["poll_errors"] += 1
                log.exception("alert service poll failed")
            self._stop.wait(self.poll_interval_s)

    # -- one poll ------------------------------------------------------------------------
    def poll_once(self) -> list[AlertEvent]:
        """Processes what is new on disk, delivers, re-sends when due; the events of this poll."""
        with self.lock:
            t0 = time.perf_counter()
            now = self.clock()
            ready, waiting = [], 0
            for pf in scan(self.out_dir, skip=self._final):
                if self.done.get(pf.path) == pf.signature:
                    continue
                if not has_features(self.out_dir, pf.tenant, pf.window_start, pf.pane) \
                        and now - pf.mtime < self.feature_wait_s:
                    waiting += 1
                    continue
                v = self._read(pf)
                self.done[pf.path] = pf.signature
                if v is not None:
                    ready.append((pf, v, now))
            self.waiting_features = waiting
            ready.sort(key=lambda r: (r[1].tenant, r[1].window_start, r[1].pane_index))
            events: list[AlertEvent] = []
            cause: dict[tuple[str, str], tuple[PaneFile, float]] = {}
            touched: set[str] = set()
            for pf, v, seen in ready:
                tracker = self.trackers.get(v.tenant)
                if tracker is None:
                    tracker = self.trackers[v.tenant] = TenantTracker(self.policy, v.tenant, self.horizon)
                for e in tracker.add(v):
                    events.append(e)
                    cause[e.key] = (pf, seen)
                touched.add(v.tenant)
                self.counts["files_processed"] += 1
            changed: dict[tuple[str, str], Incident] = {e.key: e.incident for e in events}
            self.latest.update(changed)  # (withdrawn ones are only here)
            live = {(t, inc.id): inc for t in touched for inc in self.trackers[t].incidents()}
            self.latest.update(live)  # the newest versions: windows after the last event count too
            changed = {k: self.latest[k] for k in changed}
            self.counts["alert_events"] += len(events)
            self._deliver(changed, cause, now)
            self._persist(set(live) | set(changed))
            if self.feed is not None:  # after the alerts: a slow actuator must not delay them
                self.feed.feed((pf, v) for pf, v, _ in ready)
            if now - self.last_resend >= self.resend_interval_s:
                self.resend(now)
            self.counts["polls"] += 1
            self.counts["last_poll_ms"] = int((time.perf_counter() - t0) * 1000)
            return events

    def _final(self, tenant: str, window_start: int, path: str) -> bool:
        """A file already read whose window is past the tracker's horizon: not even stat'ed."""
        tracker = self.trackers.get(tenant)
        last = None if tracker is None else tracker.frozen.last_window
        return last is not None and window_start <= last and path in self.done

    def _read(self, pf: PaneFile) -> Verdict | None:
        tracker = self.trackers.get(pf.tenant)
        busy = tracker is not None and any(i.active for i in tracker.incidents())

        def agents(p: float) -> bool:  # implicated agents only where an incident may use them
            return busy or p >= self.policy.bands.cuts[0]

        try:
            return read_verdict(self.out_dir, pf, self.stress, self.policy.top_k, agents)
        except Exception as err:  # noqa: BLE001 - a bad file is a dead letter with its reason
            self.counts["files_unreadable"] += 1
            reason = f"{type(err).__name__}: {err}"
            log.warning("unreadable prediction file %s: %s", pf.path, reason)
            os.makedirs(self.alerts_dir, exist_ok=True)
            with open(os.path.join(self.alerts_dir, "deadletter.ndjson"), "a") as fh:
                fh.write(json.dumps({"reason": "unreadable_prediction", "detail": reason, "source": pf.path,
                                     "at": iso(self.clock())}) + "\n")
            return None

    # -- delivery ------------------------------------------------------------------------
    def _deliver(self, changed: dict[tuple[str, str], Incident], cause: dict, now: float) -> None:
        batch: list[dict] = []
        transitions: list[tuple[tuple[str, str], str]] = []
        for key, inc in changed.items():
            sent, labels = self.sent.get(key), alert_labels(inc)
            if sent is None:
                if inc.status == WITHDRAWN:  # never told anyone: nothing to take back
                    continue
                p = alert_payload(inc, self.external_url, now, now, self.ttl_s)
                self.sent[key] = _Sent(labels, now, FIRING if inc.active else ENDED, p)
                batch.append(p)
                transitions.append((key, "open" if inc.active else "open_resolved"))
            elif sent.state == FIRING and inc.active:
                if labels != sent.labels:
                    batch.append(alert_payload(inc, self.external_url, sent.starts_at, now, self.ttl_s,
                                               labels=sent.labels))
                    p = alert_payload(inc, self.external_url, sent.starts_at, now, self.ttl_s)
                    batch.append(p)
                    sent.labels, sent.payload = labels, p
                    transitions.append((key, "update"))
            elif sent.state == FIRING:
                p = alert_payload(inc, self.external_url, sent.starts_at, now, self.ttl_s, labels=sent.labels)
                batch.append(p)
                sent.state, sent.payload = ENDED, p
                transitions.append((key, "withdraw" if inc.status == WITHDRAWN else "resolve"))
            elif inc.active:  # reopened by a later pane
                p = alert_payload(inc, self.external_url, now, now, self.ttl_s)
                self.sent[key] = _Sent(labels, now, FIRING, p, sent.history)
                batch.append(p)
                transitions.append((key, "reopen"))
        if not batch:
            return
        accepted = self.delivery.deliver(batch)
        delivered = self.clock()
        for key, action in transitions:
            pf, seen = cause.get(key, (None, now))
            entry = {"tenant": key[0], "incident": key[1], "action": action,
                     "window_start": self.latest[key].last_window[0] if key in self.latest else None,
                     "file": pf.path if pf else None, "file_mtime": pf.mtime if pf else None,
                     "seen_at": seen, "delivered_at": delivered, "accepted": accepted}
            self.latencies.append(entry)
            self.sent[key].history.append({"action": action, "at": iso(delivered), "accepted": accepted,
                                           "window_start": entry["window_start"]})
            self.counts[f"alerts_{action}"] += 1

    def resend(self, now: float | None = None) -> int:
        """Re-sends every firing alert with a fresh ``endsAt``; how many."""
        with self.lock:
            now = self.clock() if now is None else now
            self.last_resend = now
            batch = []
            for key, sent in self.sent.items():
                if sent.state != FIRING:
                    continue
                inc = self.latest.get(key)
                if inc is not None and inc.active:
                    p = alert_payload(inc, self.external_url, sent.starts_at, now, self.ttl_s)
                else:  # reloaded from disk, not yet seen again in this process
                    p = {**sent.payload, "endsAt": iso(now + self.ttl_s)}
                sent.payload = p
                batch.append(p)
            self.delivery.deliver(batch, resend=True)
            return len(batch)

    def _refresh(self, alert: dict) -> dict:
        """A spilled alert as it should go out now: still firing -> a fresh ``endsAt``."""
        labels = alert.get("labels", {})
        sent = self.sent.get((labels.get("tenant"), labels.get("incident")))
        if sent is not None and sent.state == FIRING and labels == sent.labels \
                and alert.get("annotations", {}).get("status") == ACTIVE:
            return {**alert, "endsAt": iso(self.clock() + self.ttl_s)}
        return alert

    def replay_spill(self) -> int:
        """Delivers whatever waits in the spill now; how many alerts went out."""
        with self.lock:
            return self.delivery.replay()

    # -- records -------------------------------------------------------------------------
    def _record(self, key: tuple[str, str], inc: Incident) -> dict:
        rec = inc.to_dict()
        sent = self.sent.get(key)
        rec["alert"] = None if sent is None else {
            "state": sent.state, "labels": sent.labels, "starts_at": iso(sent.starts_at),
            "starts_at_s": sent.starts_at, "last_payload": sent.payload}
        rec["events"] = [] if sent is None else list(sent.history)
        return rec

    def _persist(self, keys: set[tuple[str, str]]) -> None:
        for key in keys:
            inc = self.latest.get(key)
            if inc is None:
                continue
            rec = self._record(key, inc)
            if self.written.get(key) != rec:
                write_incident(self.out_dir, rec)
                self.written[key] = rec

    def _reload(self) -> None:
        """Delivery state from the records of an earlier run of the service on this out dir."""
        for rec in all_incidents(self.out_dir):
            alert = rec.get("alert")
            if alert:
                key = (rec["tenant"], rec["id"])
                self.sent[key] = _Sent(alert["labels"], float(alert["starts_at_s"]), alert["state"],
                                       alert["last_payload"], list(rec.get("events", [])))
                self.written[key] = rec

    # -- readers -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Delivery and processing counters plus gauges, for ``/metrics``."""
        # atomic copies, no lock: /metrics must answer while a poll waits on a slow sink
        out = {**{k: int(v) for k, v in dict(self.counts).items()}, **self.delivery.counters()}
        trackers = list(self.trackers.values())
        for name in ("verdicts", "uncommitted", "late_ignored", "stale_pane"):
            key = "verdicts" if name == "verdicts" else f"verdicts_{name}"
            out[key] = sum(t.counts[name] for t in trackers)
        sent = list(self.sent.values())
        out["incidents_open"] = sum(1 for s in sent if s.state == FIRING)
        out["incidents_total"] = len(sent)
        out["files_waiting_features"] = self.waiting_features
        out["tenants"] = len(trackers)
        if self.feed is not None:
            out.update(self.feed.counters())
        return out

    def interventions(self) -> dict[tuple[str, str], int]:
        """Interventions issued by this process, by (kind, delivery status); {} without a workflow."""
        return {} if self.feed is None else self.feed.interventions()

    def interventions_by_tenant(self) -> dict[tuple[str, str], int]:
        """Interventions issued by this process, by (tenant, kind); {} without a workflow."""
        return {} if self.feed is None else self.feed.interventions_by_tenant()

    def open_by_tenant(self) -> dict[str, int]:
        """Incidents firing, per tenant."""
        out: dict[str, int] = {}
        for s in list(self.sent.values()):
            if s.state == FIRING:
                tenant = s.labels.get("tenant", "")
                out[tenant] = out.get(tenant, 0) + 1
        return out

    def held_back(self) -> dict[str, int]:
        """Committed verdicts held back (status not ``ok``) by reason, every reason present."""
        out = dict.fromkeys(HELD_BACK_REASONS, 0)
        for t in list(self.trackers.values()):
            for reason, n in list(t.held_back.items()):
                out[reason] = out.get(reason, 0) + n
        return out

    def latency_log(self) -> list[dict]:
        """Per delivered transition: prediction file mtime, when seen, when delivered (epoch s)."""
        with self.lock:
            return list(self.latencies)

    def open_incidents(self) -> list[Incident]:
        with self.lock:
            return [i for i in self.latest.values() if i.status == ACTIVE]


def build_service(out_dir: str, *, alertmanager_url: str | None = None, webhook_url: str | None = None,
                  external_url: str = "http://127.0.0.1:8000", risk_bands: str = "0.3,0.7",
                  resolve_windows: int = 3, poll_interval_s: float = 0.1, resend_interval_s: float = 60.0,
                  ttl_s: float | None = None, timeout_s: float = 2.0, latency_ref_ms: float = 50.0,
                  timeout_ms: float = 1000.0, actuator: str = "off", approve_above: float = 0.2,
                  model_dir: str | None = None, **policy: float) -> AlertService:
    """The service with the usual sinks, from configuration values (``risk_bands`` as in
    ``RunConfig``; ``latency_ref_ms``/``timeout_ms`` as the run's stress filtration, for the
    implicated agents; ``actuator`` other than ``off`` runs the incident workflow
    (``workflow_feed.build_feed``); other keywords are ``AlertPolicy`` fields)."""
    sinks: list = []
    if alertmanager_url:
        sinks.append(AlertmanagerSink(alertmanager_url, timeout_s))
    if webhook_url:
        sinks.append(WebhookSink(webhook_url, timeout_s))
    rules = AlertPolicy.from_risk_bands(risk_bands, resolve_windows=resolve_windows, **policy)
    feed = None
    if actuator != "off":
        from pipelines.alerts.workflow_feed import build_feed

        feed = build_feed(out_dir, actuator, approve_above, rules, model_dir)
    return AlertService(out_dir, rules, sinks, external_url, poll_interval_s, resend_interval_s, ttl_s,
                        stress=StressFiltration(latency_ref_ms, timeout_ms), feed=feed)
