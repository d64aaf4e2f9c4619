"""Alert delivery: Alertmanager's v2 API and a generic webhook, with retries, a spill file and
replay.

An incident becomes one Alertmanager alert (``POST {url}/api/v2/alerts``, a JSON list of
``{labels, annotations, startsAt, endsAt, generatorURL}``). Alertmanager identifies an alert
by its labels: alertname ``AuraCascadeRisk``, tenant, incident, severity (``warning``, or
``critical`` for a cascade in progress) and mechanism. While the incident is open its
``endsAt`` is ``now + ttl`` and the alert is re-sent before that (an alert not re-sent is
resolved by Alertmanager when ``endsAt`` passes); on resolve ``endsAt = now``.

Each sink gets ``attempts`` tries with exponential backoff (``backoff_s`` doubling up to
``backoff_max_s``); after the last failure the alerts are appended, with the error, to the
spill file (NDJSON, fsynced) and the sink counts as down for ``down_for_s`` (deliveries in
that time go straight to the spill, without waiting on a dead endpoint). A 4xx answer (but
408/429) is not retried: those alerts go to ``<spill>.rejected.ndjson`` with the answer, as
dead letters. Nothing is dropped:
the next delivery to a sink first replays its spilled entries in order (older states before
newer ones), and ``replay()`` does it on demand. Replays are idempotent for Alertmanager
(same labels, same startsAt); ``refresh`` lets the owner renew a replayed alert (the service
gives a still-firing alert a fresh ``endsAt``, so an old spilled copy does not end it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

import httpx

from pipelines.alerts.policy import ACTIVE, CASCADE, WITHDRAWN, Incident

ALERTNAME = "AuraCascadeRisk"
WEBHOOK_VERSION = "aura.alerts/v1"


def iso(t: float) -> str:
    """RFC 3339 UTC with milliseconds, as Alertmanager writes them."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def incident_url(external_url: str, tenant: str, incident_id: str) -> str:
    return f"{external_url.rstrip('/')}/v1/tenants/{quote(tenant, safe='')}/incidents/{quote(incident_id)}"


def alert_labels(inc: Incident) -> dict[str, str]:
    return {"alertname": ALERTNAME, "tenant": inc.tenant, "incident": inc.id,
            "severity": "critical" if inc.kind == CASCADE else "warning", "mechanism": inc.mechanism}


def _summary(inc: Incident) -> str:
    agents = ", ".join(a for a, _ in inc.implicated[:3]) or "none identified"
    if inc.status == WITHDRAWN:
        return f"Withdrawn: a later pane lowered the cascade risk that opened this alert for {inc.tenant}"
    if inc.status != ACTIVE:
        return (f"Resolved: {inc.tenant} is healthy and below the high risk band again "
                f"(peak risk {inc.peak_probability:.2f}, {inc.windows} windows)")
    if inc.kind == CASCADE:
        share = f"{inc.unhealthy_frac:.0%} of agents unhealthy" if inc.unhealthy_frac is not None \
            else "the fleet is unhealthy"
        return (f"Cascade in progress in {inc.tenant}: {share}; likely {inc.mechanism}; "
                f"implicated: {agents}")
    return (f"Cascade risk {inc.probability:.2f} (peak {inc.peak_probability:.2f}) in {inc.tenant}, "
            f"fleet still healthy; likely {inc.mechanism}; implicated: {agents}")


def alert_payload(inc: Incident, external_url: str, starts_at: float, now: float, ttl_s: float,
                  labels: dict[str, str] | None = None) -> dict:
    """The Alertmanager alert of an incident: firing until ``now + ttl_s`` while it is open,
    ended at ``now`` otherwise. ``labels`` overrides (to end an alert's previous label set)."""
    link = incident_url(external_url, inc.tenant, inc.id)
    start, end = inc.last_window
    return {
        "labels": labels or alert_labels(inc),
        "annotations": {
            "summary": _summary(inc),
            "implicated_agents": ", ".join(f"{a} ({s:.2f})" for a, s in inc.implicated),
            "incident": link, "risk": f"{inc.probability:.3f}", "peak_risk": f"{inc.peak_probability:.3f}",
            "window": f"{iso(start / 1000)}/{iso(end / 1000)}",
            "opened_window": f"{iso(inc.opened_window[0] / 1000)}/{iso(inc.opened_window[1] / 1000)}",
            "kind": inc.kind, "status": inc.status},
        "startsAt": iso(starts_at),
        "endsAt": iso(now + ttl_s if inc.active and labels is None else now),
        "generatorURL": link,
    }


class AlertmanagerSink:
    """``POST {url}/api/v2/alerts`` (any 2xx is success)."""

    def __init__(self, url: str, timeout_s: float = 2.0, name: str = "alertmanager"):
        self.url, self.name = url.rstrip("/"), name
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(1.0, timeout_s)))

    def send(self, alerts: list[dict]) -> None:
        self.client.post(f"{self.url}/api/v2/alerts", json=alerts).raise_for_status()

    def close(self) -> None:
        self.client.close()


class WebhookSink:
    """``POST url`` with ``{"version": "aura.alerts/v1", "alerts": [...]}`` (the same alerts)."""

    def __init__(self, url: str, timeout_s: float = 2.0, name: str = "webhook",
                 headers: dict[str, str] | None = None):
        self.url, self.name = url, name
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(1.0, timeout_s)),
                                   headers=headers)

    def send(self, alerts: list[dict]) -> None:
        self.client.post(self.url, json={"version": WEBHOOK_VERSION, "alerts": alerts}).raise_for_status()

    def close(self) -> None:
        self.client.close()


COUNTERS = ("alerts_sent", "alerts_resent", "alerts_failed", "alerts_spilled", "alerts_replayed",
            "alerts_rejected", "delivery_errors", "spill_pending")
OK, FAILED, REJECTED = "ok", "failed", "rejected"


def _append(path: str, entry: dict) -> None:
    """One NDJSON line, fsynced."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class Delivery:
    """Sends alert batches to every sink: retries, spill, replay (module doc). Thread-safe."""

    def __init__(self, sinks: Sequence, spill_path: str, attempts: int = 3, backoff_s: float = 0.05,
                 backoff_max_s: float = 0.5, down_for_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 refresh: Callable[[dict], dict] | None = None):
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must differ: {names}")
        self.sinks, self.spill_path = list(sinks), spill_path
        self.rejected_path = os.path.splitext(spill_path)[0] + ".rejected.ndjson"
        self.attempts, self.backoff_s, self.backoff_max_s, self.down_for_s = (
            attempts, backoff_s, backoff_max_s, down_for_s)
        self.sleep, self.clock = sleep, clock
        self.refresh = refresh  # spilled alert -> what to send on replay (the service renews endsAt)
        self.lock = threading.RLock()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.down_until: dict[str, float] = {}
        self.last_error: dict[str, str] = {}
        self.counts["spill_pending"] = sum(len(e["alerts"]) for e in self._spilled())

    # -- sending -------------------------------------------------------------------------
    def deliver(self, alerts: list[dict], resend: bool = False) -> dict[str, bool]:
        """Sends one batch to each sink (replaying that sink's spill first); per sink, whether
        it was accepted now (False: spilled)."""
        if not alerts:
            return {}
        with self.lock:
            return {sink.name: self._deliver_one(sink, alerts, resend) for sink in self.sinks}

    def _deliver_one(self, sink, alerts: list[dict], resend: bool) -> bool:
        if self.clock() < self.down_until.get(sink.name, 0.0):
            self._spill(sink.name, alerts, f"sink down: {self.last_error.get(sink.name, '')}", resend)
            return False
        if self._pending(sink.name) and not self._replay_sink(sink):
            self._spill(sink.name, alerts, self.last_error.get(sink.name, "replay failed"), resend)
            return False
        status, error = self._try(sink, alerts)
        if status == OK:
            self.counts["alerts_resent" if resend else "alerts_sent"] += len(alerts)
            return True
        if status == REJECTED:
            self._reject(sink.name, alerts, error)
        else:
            self._spill(sink.name, alerts, error, resend)
        return False

    def _try(self, sink, alerts: list[dict]) -> tuple[str, str]:
        """(OK | FAILED | REJECTED, error) after up to ``attempts`` tries with backoff. A 4xx
        answer (but 408/429) is final: the sink rejects these alerts, retrying cannot help."""
        delay, error = self.backoff_s, ""
        for attempt in range(self.attempts):
            try:
                sink.send(alerts)
                self.down_until.pop(sink.name, None)
                return OK, ""
            except (httpx.HTTPError, OSError) as err:
                self.counts["delivery_errors"] += 1
                error = f"{type(err).__name__}: {err}"
                if isinstance(err, httpx.HTTPStatusError):
                    code = err.response.status_code
                    error += f": {err.response.text[:500]}"
                    if 400 <= code < 500 and code not in (408, 429):
                        return REJECTED, error
                if attempt + 1 < self.attempts:
                    self.sleep(delay)
                    delay = min(2 * delay, self.backoff_max_s)
        self.last_error[sink.name] = error
        self.down_until[sink.name] = self.clock() + self.down_for_s
        return FAILED, error

    # -- spill and replay ----------------------------------------------------------------
    def _spill(self, sink: str, alerts: list[dict], error: str, resend: bool) -> None:
        self.counts["alerts_failed"] += len(alerts)
        self.counts["alerts_spilled"] += len(alerts)
        self.counts["spill_pending"] += len(alerts)
        _append(self.spill_path, {"sink": sink, "spilled_at": iso(time.time()), "error": error,
                                  "resend": resend, "alerts": alerts})

    def _reject(self, sink: str, alerts: list[dict], error: str) -> None:
        """Dead letters: alerts a sink refused (a 4xx), kept with the reason beside the spill."""
        self.counts["alerts_failed"] += len(alerts)
        self.counts["alerts_rejected"] += len(alerts)
        _append(self.rejected_path, {"sink": sink, "rejected_at": iso(time.time()), "error": error,
                                     "alerts": alerts})

    def _spilled(self) -> list[dict]:
        if not os.path.exists(self.spill_path):
            return []
        with open(self.spill_path) as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def _pending(self, sink: str) -> bool:
        return self.counts["spill_pending"] > 0 and any(e["sink"] == sink for e in self._spilled())

    def _rewrite(self, entries: list[dict]) -> None:
        tmp = f"{self.spill_path}.tmp"
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(e, sort_keys=True) + "\n" for e in entries)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.spill_path)
        self.counts["spill_pending"] = sum(len(e["alerts"]) for e in entries)

    def _replay_sink(self, sink) -> bool:
        """Delivers ``sink``'s spilled entries in order; True when none is left."""
        entries = self._spilled()
        keep, failed = [], False
        for e in entries:
            if e["sink"] != sink.name or failed:
                keep.append(e)
                continue
            alerts = [self.refresh(a) for a in e["alerts"]] if self.refresh else e["alerts"]
            status, error = self._try(sink, alerts)
            if status == OK:
                self.counts["alerts_replayed"] += len(e["alerts"])
            elif status == REJECTED:
                self._reject(sink.name, e["alerts"], error)
                self.counts["alerts_failed"] -= len(e["alerts"])  # counted when it was spilled
            else:
                failed = True
                keep.append(e)
        if len(keep) != len(entries):
            self._rewrite(keep)
        return not failed

    def replay(self) -> int:
        """Replays every sink's spill now; the number of alerts delivered."""
        with self.lock:
            before = self.counts["alerts_replayed"]
            for sink in self.sinks:
                if self._pending(sink.name):
                    self._replay_sink(sink)
            return self.counts["alerts_replayed"] - before

    def counters(self) -> dict[str, int]:
        return dict(self.counts)  # an atomic copy: readable while a delivery holds the lock

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
