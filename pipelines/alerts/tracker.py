"""Verdicts as they arrive -> the state machine's events, tolerating late panes and windows
that arrive out of order.

The streaming job writes one file per (tenant, window, pane): a later pane of a window
replaces its verdict, and windows need not land in order. The tracker keeps the latest
committed pane of each of the tenant's last ``horizon`` windows unfrozen and re-folds them
from the frozen state on every arrival (a few dozen steps), then reports the difference to
what it reported before: so the incidents are always those of the in-order fold over the
latest panes, whatever the arrival order within the horizon. Verdicts older than the horizon
are counted and ignored (their windows are final). An incident whose opening verdict a later
pane took back is reported ``withdrawn`` (a resolve event). Held-back verdicts (status not
``ok``: the policy lets them change no incident) are counted by reason as they arrive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from pipelines.alerts.policy import (
    ACTIVE,
    OPEN,
    RESOLVE,
    UPDATE,
    WITHDRAWN,
    AlertEvent,
    AlertPolicy,
    Incident,
    TenantState,
    Verdict,
    fold,
    step,
)
from pipelines.calibration import CALIBRATING, OUT_OF_DISTRIBUTION

HELD_BACK_REASONS = (CALIBRATING, OUT_OF_DISTRIBUTION)
OTHER_STATUS = "unknown_status"  # any other status a file may carry (keeps the label set bounded)


class TenantTracker:
    """One tenant's incidents from its verdicts in any order (module doc)."""

    def __init__(self, policy: AlertPolicy, tenant: str, horizon: int = 32):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.policy, self.tenant, self.horizon = policy, tenant, horizon
        self.frozen = TenantState(tenant)
        self.state = self.frozen
        self.tail: dict[int, Verdict] = {}  # window start -> latest committed pane
        self.known: dict[str, Incident] = {}  # last reported version of incidents not yet final
        self.counts = {"verdicts": 0, "uncommitted": 0, "late_ignored": 0, "stale_pane": 0}
        self.held_back: Counter = Counter()  # committed verdicts held back, by reason

    @property
    def open_incident(self) -> Incident | None:
        return self.state.open

    def incidents(self) -> list[Incident]:
        """Latest versions of the incidents that may still change (open, or recently resolved)."""
        return sorted(self.known.values(), key=lambda i: i.opened_window)

    def add(self, v: Verdict) -> list[AlertEvent]:
        """Takes one verdict (any pane, any order); the events it causes, in window order."""
        if v.tenant != self.tenant:
            raise ValueError(f"verdict of tenant {v.tenant!r} given to the tracker of {self.tenant!r}")
        self.counts["verdicts"] += 1
        if not v.committed:
            self.counts["uncommitted"] += 1
            return []
        if self.frozen.last_window is not None and v.window_start <= self.frozen.last_window:
            self.counts["late_ignored"] += 1
            return []
        old = self.tail.get(v.window_start)
        if old is not None and old.pane_index > v.pane_index:
            self.counts["stale_pane"] += 1
            return []
        if v.held_back:
            self.held_back[v.status if v.status in HELD_BACK_REASONS else OTHER_STATUS] += 1
        self.tail[v.window_start] = v
        while len(self.tail) > self.horizon:  # the oldest window becomes final
            first = min(self.tail)
            self.frozen, _ = step(self.policy, self.frozen, self.tail.pop(first))
        self.state, events = fold(self.policy, self.frozen, [self.tail[w] for w in sorted(self.tail)])
        return self._report(events)

    def _report(self, events: list[AlertEvent]) -> list[AlertEvent]:
        current: dict[str, Incident] = {}
        opened: dict[str, AlertEvent] = {}
        for e in events:
            current[e.incident.id] = e.incident
            if e.action == OPEN:
                opened.setdefault(e.incident.id, e)
        if self.state.open is not None:
            current[self.state.open.id] = self.state.open
        out: list[AlertEvent] = []
        for iid, inc in current.items():
            before = self.known.get(iid)
            at = (inc.resolved_window or inc.last_window)[0]
            if before is None or before.status != ACTIVE and inc.status == ACTIVE:
                first = opened.get(iid)
                out.append(first if first is not None and before is None else AlertEvent(OPEN, inc, at))
                if inc.status != ACTIVE:
                    out.append(AlertEvent(RESOLVE, inc, at))
            elif before.status == ACTIVE and inc.status != ACTIVE:
                out.append(AlertEvent(RESOLVE, inc, at))
            elif inc.status == ACTIVE and (before.kind, before.mechanism) != (inc.kind, inc.mechanism):
                out.append(AlertEvent(UPDATE, inc, at))
        start = min(self.tail) if self.tail else None
        for iid, before in list(self.known.items()):
            if iid in current:
                continue
            del self.known[iid]  # final (its windows frozen), or withdrawn
            if start is not None and before.opened_window[0] >= start:  # should have been reproduced
                gone = replace(before, status=WITHDRAWN, resolved_window=before.resolved_window
                               or before.last_window)
                out.append(AlertEvent(RESOLVE, gone, gone.resolved_window[0]))
        self.known.update(current)  # a resolved one leaves once its windows are frozen (above)
        return sorted(out, key=lambda e: e.window_start)
