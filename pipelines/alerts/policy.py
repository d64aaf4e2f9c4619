"""The per-tenant alert state machine: committed verdicts in window order -> alert events.

Rules (pure; no I/O, no clock):

- Only committed verdicts count (a consensus certificate); an uncommitted one changes nothing.
- A committed verdict whose status is not ``ok`` (``pipelines.calibration``: the tenant is
  still ``calibrating``, or the window is ``out_of_distribution``) is *held back*: the model
  is unsure, so it neither opens, escalates nor resolves an incident, does not count towards
  (or break) the calm windows that resolve one, and does not feed the mechanism baseline; an
  open incident only notes it in its timeline (with its status).
- A committed verdict in the high band (``probability >= high``; the top cut of the risk
  bands, 0.7 by default) opens an incident when none is open.
- The fleet's health in a window comes from its feature row:
  *unhealthy* when ``unhealthy_frac >= cascade_unhealthy_frac`` (0.1, the simulator's cascade
  fraction) or ``error_rate_p90 >= cascade_error_rate_p90`` (0.1); *healthy* when
  ``unhealthy_frac <= healthy_unhealthy_frac`` (0.05) and ``error_rate_p90 <=
  healthy_error_rate_p90`` (0.05) (and, if set, ``latency_p99_log_p50 <=
  healthy_latency_log_p50``); *degraded* in between; *unknown* without a feature row.
- An open incident is a ``warning`` while the fleet is still healthy and becomes
  ``cascade_in_progress`` in the first unhealthy window (never back: the cascade it warned of
  has started). The model's risk of a *new* onset drops to near zero once a cascade runs, so a
  low verdict alone says nothing about recovery.
- It resolves after ``resolve_windows`` (3) consecutive committed windows that are below the
  high band *and* healthy; any other committed window restarts the count.
- Its mechanism is guessed when it opens (``pipelines.alerts.mechanism``, against the tenant's
  baseline of healthy low-band windows); an ``unknown`` one is refined by a later window
  while it is still a warning.

``step`` folds one verdict, ``fold`` many; both return the new state and the events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pipelines.alerts.mechanism import UNKNOWN, Baseline, classify
from pipelines.calibration import OK
from pipelines.consensus.validator import RiskBands

WARNING, CASCADE = "warning", "cascade_in_progress"
OPEN, UPDATE, RESOLVE = "open", "update", "resolve"
HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN_HEALTH = "healthy", "degraded", "unhealthy", "unknown"
ACTIVE, RESOLVED, WITHDRAWN = "open", "resolved", "withdrawn"


@dataclass(frozen=True)
class Verdict:
    """One (tenant, window)'s prediction, its certificate and what the window looked like."""

    tenant: str
    window_start: int  # ms
    window_end: int  # ms
    probability: float
    certificate: str | None  # consensus QC (JSON); None: not committed
    pane_index: int = 0
    features: Mapping[str, float] | None = None  # the window's feature row (by name); None: not read
    implicated: tuple[tuple[str, float], ...] = ()  # (agent, involvement), most involved first
    status: str = OK  # ok | calibrating | out_of_distribution (pipelines.calibration)

    @property
    def committed(self) -> bool:
        return self.certificate is not None

    @property
    def held_back(self) -> bool:
        """The model is unsure of this verdict: it changes no incident (module doc)."""
        return self.status != OK


@dataclass(frozen=True)
class AlertPolicy:
    """Thresholds of the state machine (module doc); defaults as documented there."""

    bands: RiskBands = RiskBands()
    resolve_windows: int = 3
    cascade_unhealthy_frac: float = 0.1
    cascade_error_rate_p90: float = 0.1
    healthy_unhealthy_frac: float = 0.05
    healthy_error_rate_p90: float = 0.05
    healthy_latency_log_p50: float | None = None  # off by default: latency levels differ per fleet
    top_k: int = 5  # implicated agents kept on the incident
    timeline_limit: int = 360  # windows kept on the incident record (the first and the latest)

    def __post_init__(self):
        if self.resolve_windows < 1:
            raise ValueError(f"resolve_windows must be >= 1, got {self.resolve_windows}")
        if not (0 <= self.healthy_unhealthy_frac <= self.cascade_unhealthy_frac
                and 0 <= self.healthy_error_rate_p90 <= self.cascade_error_rate_p90):
            raise ValueError("healthy thresholds must lie between 0 and the cascade thresholds")
        if self.timeline_limit < 2 or self.top_k < 0:
            raise ValueError("timeline_limit must be >= 2 and top_k >= 0")

    @staticmethod
    def from_risk_bands(risk_bands: str = "0.3,0.7", **overrides) -> AlertPolicy:
        """The policy for ``RunConfig.risk_bands`` (cut points; the top band is 'high')."""
        cuts = tuple(float(c) for c in risk_bands.split(",") if c.strip())
        names = ("low", "elevated", "high") if len(cuts) == 2 else \
            tuple(f"band{i}" for i in range(len(cuts))) + ("high",)
        return AlertPolicy(RiskBands(cuts, names), **overrides)

    @property
    def high(self) -> float:
        return self.bands.cuts[-1]

    def band(self, p: float) -> str:
        return self.bands.band(p)

    def health(self, features: Mapping[str, float] | None) -> str:
        if features is None:
            return UNKNOWN_HEALTH
        u, e = features.get("unhealthy_frac"), features.get("error_rate_p90")
        if u is None or e is None:
            return UNKNOWN_HEALTH
        if u >= self.cascade_unhealthy_frac or e >= self.cascade_error_rate_p90:
            return UNHEALTHY
        lat, cap = features.get("latency_p99_log_p50"), self.healthy_latency_log_p50
        slow = cap is not None and (lat is None or lat > cap)
        if u <= self.healthy_unhealthy_frac and e <= self.healthy_error_rate_p90 and not slow:
            return HEALTHY
        return DEGRADED


@dataclass(frozen=True)
class Incident:
    """An alert's record: what opened it, what it is now, and the windows it has seen."""

    id: str
    tenant: str
    status: str  # open | resolved | withdrawn (a later pane took back the verdict that opened it)
    kind: str  # warning | cascade_in_progress
    mechanism: str
    opened_window: tuple[int, int]  # (start, end) ms of the verdict that opened it
    last_window: tuple[int, int]
    probability: float  # latest committed verdict's
    peak_probability: float
    peak_window: int
    certificate: str  # of the verdict that opened it
    implicated: tuple[tuple[str, float], ...] = ()
    unhealthy_frac: float | None = None  # latest window's
    error_rate_p90: float | None = None
    cascade_window: int | None = None  # first unhealthy window while open
    resolved_window: tuple[int, int] | None = None
    windows: int = 1
    high_windows: int = 1
    unhealthy_windows: int = 0
    timeline: tuple[dict, ...] = field(default=(), repr=False)

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def to_dict(self) -> dict:
        return {"id": self.id, "tenant": self.tenant, "status": self.status, "kind": self.kind,
                "mechanism": self.mechanism,
                "opened_window": {"start": self.opened_window[0], "end": self.opened_window[1]},
                "last_window": {"start": self.last_window[0], "end": self.last_window[1]},
                "resolved_window": None if self.resolved_window is None else
                {"start": self.resolved_window[0], "end": self.resolved_window[1]},
                "cascade_window": self.cascade_window, "probability": self.probability,
                "peak_probability": self.peak_probability, "peak_window": self.peak_window,
                "certificate": self.certificate,
                "implicated_agents": [{"agent": a, "involvement": s} for a, s in self.implicated],
                "unhealthy_frac": self.unhealthy_frac, "error_rate_p90": self.error_rate_p90,
                "windows": self.windows, "high_windows": self.high_windows,
                "unhealthy_windows": self.unhealthy_windows, "timeline": list(self.timeline)}


@dataclass(frozen=True)
class AlertEvent:
    """``open`` | ``update`` (kind or mechanism changed) | ``resolve``, with the incident after it."""

    action: str
    incident: Incident
    window_start: int  # the window whose verdict caused it

    @property
    def key(self) -> tuple[str, str]:
        return self.incident.tenant, self.incident.id


@dataclass(frozen=True)
class TenantState:
    """What the machine remembers about one tenant between verdicts."""

    tenant: str
    open: Incident | None = None
    calm: int = 0  # consecutive low and healthy committed windows while open
    last_window: int | None = None  # start (ms) of the last committed window folded
    baseline: Baseline = Baseline()


def incident_id(window_start_ms: int) -> str:
    """Stable per tenant: the opening window's start (ms); the same on every replay."""
    return f"inc-{window_start_ms}"


def _entry(policy: AlertPolicy, v: Verdict, health: str, kind: str) -> dict:
    f = v.features or {}
    return {"window_start": v.window_start, "window_end": v.window_end, "pane": v.pane_index,
            "probability": round(v.probability, 6), "band": policy.band(v.probability), "health": health,
            "unhealthy_frac": f.get("unhealthy_frac"), "error_rate_p90": f.get("error_rate_p90"),
            "kind": kind, "status": v.status}


def _merge_implicated(old: tuple, new: tuple, k: int) -> tuple[tuple[str, float], ...]:
    """Agents by their largest involvement seen over the incident, top ``k``."""
    best: dict[str, float] = {}
    for a, s in (*old, *new):
        best[a] = max(best.get(a, 0.0), float(s))
    return tuple(sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


def _timeline(inc: Incident, entry: dict, limit: int) -> tuple[dict, ...]:
    t = (*inc.timeline, entry)
    return t if len(t) <= limit else (t[0], *t[len(t) - limit + 1:])


def _open(policy: AlertPolicy, state: TenantState, v: Verdict, health: str) -> Incident:
    kind = CASCADE if health == UNHEALTHY else WARNING
    f = v.features or {}
    return Incident(
        id=incident_id(v.window_start), tenant=v.tenant, status=ACTIVE, kind=kind,
        mechanism=classify(v.features, state.baseline), opened_window=(v.window_start, v.window_end),
        last_window=(v.window_start, v.window_end), probability=v.probability,
        peak_probability=v.probability, peak_window=v.window_start, certificate=v.certificate or "",
        implicated=tuple(v.implicated[:policy.top_k]), unhealthy_frac=f.get("unhealthy_frac"),
        error_rate_p90=f.get("error_rate_p90"), cascade_window=v.window_start if kind == CASCADE else None,
        unhealthy_windows=int(health == UNHEALTHY), timeline=(_entry(policy, v, health, kind),))


def step(policy: AlertPolicy, state: TenantState, v: Verdict) -> tuple[TenantState, list[AlertEvent]]:
    """Folds one verdict; verdicts must come in window order (a later window than the last)."""
    if v.tenant != state.tenant:
        raise ValueError(f"verdict of tenant {v.tenant!r} folded into the state of {state.tenant!r}")
    if not v.committed:
        return state, []
    if state.last_window is not None and v.window_start <= state.last_window:
        raise ValueError(f"verdicts out of window order for {v.tenant}: {v.window_start} after "
                         f"{state.last_window} (the tracker reorders late panes)")
    health, high = policy.health(v.features), v.probability >= policy.high
    inc = state.open
    if v.held_back:
        if inc is not None:
            entry = _entry(policy, v, health, inc.kind)
            inc = replace(inc, timeline=_timeline(inc, entry, policy.timeline_limit))
        return replace(state, open=inc, last_window=v.window_start), []
    if inc is None:
        if not high:
            calm_window = health == HEALTHY and v.probability < policy.bands.cuts[0]  # the low band
            baseline = state.baseline.update(v.features) if calm_window else state.baseline
            return replace(state, last_window=v.window_start, baseline=baseline), []
        inc = _open(policy, state, v, health)
        return replace(state, open=inc, calm=0, last_window=v.window_start), [
            AlertEvent(OPEN, inc, v.window_start)]
    f = v.features or {}
    kind, mechanism = inc.kind, inc.mechanism
    if health == UNHEALTHY and kind == WARNING:
        kind = CASCADE
    if mechanism == UNKNOWN and kind == WARNING:  # in a cascade everything fails: no evidence left
        mechanism = classify(v.features, state.baseline)
    peak = v.probability > inc.peak_probability
    inc2 = replace(
        inc, kind=kind, mechanism=mechanism, last_window=(v.window_start, v.window_end),
        probability=v.probability, peak_probability=v.probability if peak else inc.peak_probability,
        peak_window=v.window_start if peak else inc.peak_window,
        implicated=_merge_implicated(inc.implicated, v.implicated, policy.top_k),
        unhealthy_frac=f.get("unhealthy_frac"), error_rate_p90=f.get("error_rate_p90"),
        cascade_window=inc.cascade_window if inc.cascade_window is not None or kind != CASCADE
        else v.window_start,
        windows=inc.windows + 1, high_windows=inc.high_windows + int(high),
        unhealthy_windows=inc.unhealthy_windows + int(health == UNHEALTHY),
        timeline=_timeline(inc, _entry(policy, v, health, kind), policy.timeline_limit))
    calm = state.calm + 1 if (not high and health == HEALTHY) else 0
    if calm >= policy.resolve_windows:
        done = replace(inc2, status=RESOLVED, resolved_window=(v.window_start, v.window_end))
        return replace(state, open=None, calm=0, last_window=v.window_start), [
            AlertEvent(RESOLVE, done, v.window_start)]
    changed = (kind, mechanism) != (inc.kind, inc.mechanism)
    events = [AlertEvent(UPDATE, inc2, v.window_start)] if changed else []
    return replace(state, open=inc2, calm=calm, last_window=v.window_start), events


def fold(policy: AlertPolicy, state: TenantState, verdicts: Iterable[Verdict]
         ) -> tuple[TenantState, list[AlertEvent]]:
    """``step`` over verdicts in window order; all events in order."""
    events: list[AlertEvent] = []
    for v in verdicts:
        state, ev = step(policy, state, v)
        events += ev
    return state, events
