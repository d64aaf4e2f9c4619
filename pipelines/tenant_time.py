"""Per-tenant event time: each tenant's own watermark decides when its windows fire.

Engine-neutral, plain data (no engine imports). An engine has one watermark for a stream;
tenants far apart in event time would then make each other's records late. Here every
tenant has its own watermark (the source moves it: largest event time of that tenant minus
the out-of-orderness), and the windows are decided here, pane by pane, with the semantics of
Beam's ``AfterWatermark(late=AfterCount(1))``, accumulating, with allowed lateness:

- a window fires an ON_TIME pane (index 0) with all its records once its tenant's watermark
  reaches its end;
- a record for a fired window within the allowed lateness (tenant watermark <= end +
  lateness) gives a LATE pane (index 1, 2, ...) holding every record of the window so far,
  one per batch handed in;
- a record all of whose windows expired for its tenant is late (``is_late``: the caller
  dead-letters it); a window's state is dropped once it expired;
- a tenant without records for ``idle_timeout_s`` (wall clock) is closed: its watermark moves
  past the expiry of its open windows; ``flush`` (end of stream) fires every open window.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipelines.windowing import WindowSpec, ms

ON_TIME, LATE_PANE = "ON_TIME", "LATE"
_NONE = -math.inf


@dataclass
class Pane:
    """One firing of a (tenant, window): every record the window holds so far."""

    tenant: str
    start: float
    end: float
    index: int
    timing: str
    records: list[dict]

    @property
    def window_ms(self) -> int:
        return ms(self.start)


@dataclass
class _Window:
    records: list[dict] = field(default_factory=list)
    panes: int = 0  # panes fired so far
    dirty: bool = False  # records since the last pane


@dataclass
class _Tenant:
    watermark: float
    max_seen: float = _NONE
    last_seen: float | None = None  # wall clock of its last records
    windows: dict[float, _Window] = field(default_factory=dict)


class TenantWindows:
    """Per-tenant watermarks and the panes of each tenant's windows."""

    def __init__(self, spec: WindowSpec, idle_timeout_s: float | None = None):
        self.spec, self.idle_timeout_s = spec, idle_timeout_s
        self.floor = _NONE  # a global advance: where a tenant seen later starts
        self._tenants: dict[str, _Tenant] = {}

    # -- reading ------------------------------------------------------------------------
    def watermark(self, tenant: str) -> float | None:
        t = self._tenants.get(tenant)
        wm = self.floor if t is None else t.watermark
        return None if wm == _NONE else wm

    def watermarks(self) -> dict[str, float]:
        """Tenant -> its watermark (tenants that have one)."""
        return {k: t.watermark for k, t in self._tenants.items() if t.watermark != _NONE}

    def max_seen(self) -> dict[str, float]:
        """Tenant -> largest event time handed in."""
        return {k: t.max_seen for k, t in self._tenants.items() if t.max_seen != _NONE}

    def is_late(self, tenant: str, t: float) -> bool:
        """Every window of event time ``t`` expired for ``tenant``."""
        wm = self.watermark(tenant)
        return wm is not None and self.spec.is_late(t, wm)

    # -- changing -----------------------------------------------------------------------
    def add(self, records: Iterable[dict], now: float | None = None) -> tuple[list[Pane], Counter]:
        """Hand records (not late: see ``is_late``) to their tenants' windows. Returns the
        panes this fires (late panes of windows already fired) and (tenant, window ms) ->
        records handed to that window."""
        handed: Counter = Counter()
        touched: set[str] = set()
        for r in records:
            name, t = r["tenant"], r["event_time"]
            ten = self._tenant(name)
            ten.max_seen = max(ten.max_seen, t)
            if now is not None:
                ten.last_seen = now
            for s in self.spec.starts(t):
                if self._expired(s, ten.watermark):
                    continue  # a sliding window already gone; the record's later ones are not
                w = ten.windows.setdefault(s, _Window())
                w.records.append(r)
                w.dirty = True
                handed[(name, ms(s))] += 1
            touched.add(name)
        return [p for name in sorted(touched) for p in self._fire(name)], handed

    def advance(self, tenant: str, t: float) -> list[Pane]:
        """Move ``tenant``'s watermark forward to ``t`` (never backwards)."""
        ten = self._tenant(tenant)
        if t <= ten.watermark:
            return []
        ten.watermark = t
        return self._fire(tenant)

    def advance_all(self, t: float) -> list[Pane]:
        """Every tenant, and any seen later, to at least ``t`` (test scripts, restarts)."""
        self.floor = max(self.floor, t)
        return [p for name in sorted(self._tenants) for p in self.advance(name, t)]

    def idle(self, now: float) -> list[Pane]:
        """Close the tenants with open windows and no records for ``idle_timeout_s`` up to
        wall clock ``now``: their watermark moves just past the expiry of their last window."""
        if self.idle_timeout_s is None:
            return []
        out: list[Pane] = []
        for name, ten in sorted(self._tenants.items()):
            if ten.windows and ten.last_seen is not None and now - ten.last_seen >= self.idle_timeout_s:
                last_end = max(ten.windows) + self.spec.size_s
                out += self.advance(name, math.nextafter(last_end + self.spec.allowed_lateness_s, math.inf))
        return out

    def flush(self) -> list[Pane]:
        """End of stream: every open window fires."""
        return self.advance_all(math.inf)

    # -- inside -------------------------------------------------------------------------
    def _tenant(self, name: str) -> _Tenant:
        ten = self._tenants.get(name)
        if ten is None:
            ten = self._tenants[name] = _Tenant(self.floor)
        return ten

    def _expired(self, start: float, watermark: float) -> bool:
        return watermark > start + self.spec.size_s + self.spec.allowed_lateness_s

    def _fire(self, name: str) -> list[Pane]:
        ten, out = self._tenants[name], []
        for s in sorted(ten.windows):
            w, end = ten.windows[s], s + self.spec.size_s
            if w.dirty and end <= ten.watermark:
                out.append(Pane(name, s, end, w.panes, ON_TIME if w.panes == 0 else LATE_PANE,
                                list(w.records)))
                w.panes += 1
                w.dirty = False
            if self._expired(s, ten.watermark):
                del ten.windows[s]
        return out
