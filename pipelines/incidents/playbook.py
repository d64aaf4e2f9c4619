"""The playbook: which actions a risk band and the evidence call for (pure: no I/O, no clock).

Graduated - cheap actions at elevated risk, costly ones (shedding, breakers, scaling) only at
high risk. ``top`` = the ``top_k`` ranked targets; "H1 loops" = stressed cycles in the call
graph (``stress_h1_betti_t0.5 > 0``), the mark of retry feedback, so a retry budget comes first.

=========  ============================================  ==========================================
band       evidence                                      actions, in order
=========  ============================================  ==========================================
low        -                                             none
elevated   -                                             retry_budget(retry_cap) on calls into top
elevated   agents lost                                   + reroute away from top (failing replicas)
high       H1 loops                                      retry_budget first, then by mechanism:
high       timeout_propagation, failing_dependency       circuit_breaker (fallback) callers -> top
high       retry_storm                                   shed_load(shed) at entries + retry_budget
high       load_redistribution                           scale_out(scale_k) top[0] + reroute top
high       unknown                                       retry_budget + shed_load(shed) at entries
high       escalation n (the fleet got worse)            shed = shed_fraction + n * shed_step
                                                         (<= max_shed); mechanisms that do not
                                                         shed at first shed from escalation 1 on
=========  ============================================  ==========================================

An action already active (or tried and rolled back) with the same kind, targets, links and
magnitude is never repeated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipelines.alerts.mechanism import (
    FAILING_DEPENDENCY,
    LOAD_REDISTRIBUTION,
    RETRY_STORM,
    TIMEOUT_PROPAGATION,
)
from pipelines.incidents.interventions import (
    CIRCUIT_BREAKER,
    REROUTE,
    RETRY_BUDGET,
    SCALE_OUT,
    SHED_LOAD,
    Link,
)

LOW, ELEVATED, HIGH = "low", "elevated", "high"
BANDS = (LOW, ELEVATED, HIGH)


@dataclass(frozen=True)
class Playbook:
    """The parameters of the playbook (module doc) and of the workflow's verify/close steps."""

    elevated: float  # risk band cuts on the committed verdict's probability (arm-specific)
    high: float
    retry_cap: int = 0  # retries allowed per call under a retry budget
    shed_fraction: float = 0.3
    shed_step: float = 0.2  # added per escalation
    max_shed: float = 0.6
    breaker_ttl_s: float = 60.0
    action_ttl_s: float = 120.0
    scale_k: int = 2
    verify_windows: int = 3  # windows an action has to help before it is rolled back
    close_windows: int = 3  # calm windows (below elevated, healthy) that close an incident
    top_k: int = 3
    breaker_on: str = "rank"  # rank: the highest-ranked target with callers; stress: the most stressed one
    rollback_unhelpful: bool = True  # False: keep what did not help while escalating (roll back at close)
    open_windows: int = 1  # consecutive committed windows at or above elevated that open an incident

    def __post_init__(self):
        if not 0.0 <= self.elevated <= self.high <= 1.0:
            raise ValueError(f"need 0 <= elevated <= high <= 1, got {self.elevated}, {self.high}")
        if not 0.0 < self.shed_fraction <= self.max_shed <= 1.0 or self.shed_step < 0:
            raise ValueError("need 0 < shed_fraction <= max_shed <= 1 and shed_step >= 0")
        if min(self.verify_windows, self.close_windows, self.top_k, self.scale_k) < 1 or self.retry_cap < 0:
            raise ValueError("verify_windows, close_windows, top_k, scale_k must be >= 1, retry_cap >= 0")
        if not 1 <= self.open_windows <= 3:
            raise ValueError(f"open_windows must be 1-3, got {self.open_windows}")
        if self.breaker_on not in ("rank", "stress"):
            raise ValueError(f"breaker_on is 'rank' or 'stress', got {self.breaker_on!r}")

    def band(self, probability: float) -> str:
        return HIGH if probability >= self.high else ELEVATED if probability >= self.elevated else LOW


@dataclass(frozen=True)
class Assessment:
    """What assess (or verify, on escalation) found in one committed window."""

    probability: float
    band: str  # low | elevated | high (a running cascade counts as high)
    trend: float = 0.0  # change of probability per window over the recent windows
    health: str = "unknown"
    loops: bool = False  # stressed H1 cycles
    agents_lost: bool = False
    escalation: int = 0  # times the fleet got worse (or an action did not help) since opening


@dataclass(frozen=True)
class ActionSpec:
    """An intervention before it is bound to a verdict (the workflow adds window and certificate)."""

    kind: str
    targets: tuple[str, ...]
    magnitude: float
    ttl_s: float
    reason: str
    links: tuple[Link, ...] = ()

    @property
    def key(self) -> tuple:
        return self.kind, tuple(self.targets), tuple(self.links), round(float(self.magnitude), 9)


class RankedTarget(Protocol):
    agent: str
    callers: tuple[str, ...]
    stress: float


def shed_magnitude(book: Playbook, steps: int) -> float:
    return round(min(book.shed_fraction + book.shed_step * max(steps, 0), book.max_shed), 9)


def _breaker_links(top: Sequence[RankedTarget], on: str = "rank") -> tuple[Link, ...]:
    """Every caller -> callee link into the highest-ranked target that has callers (``on``
    "rank"), or into the one under the most stress of its own (``on`` "stress": the slowed
    dependency itself rather than a caller waiting on it)."""
    called = [t for t in top if t.callers]
    if not called:
        return ()
    t = max(called, key=lambda x: getattr(x, "stress", 0.0)) if on == "stress" else called[0]
    return tuple(Link(c, t.agent) for c in t.callers)


def decide(assessment: Assessment, targets: Sequence[RankedTarget], entries: Sequence[str],
           active: Iterable[ActionSpec], book: Playbook, mechanism: str) -> list[ActionSpec]:
    """The next actions for this assessment (module doc table), minus those already active."""
    top = list(targets[:book.top_k])
    names = tuple(t.agent for t in top)
    a, ttl = assessment, book.action_ttl_s
    if a.band not in (ELEVATED, HIGH) or not names:
        return []
    why = f"{a.band} risk {a.probability:.2f}, {mechanism}" + (", H1 loops" if a.loops else "") + \
        (f", escalation {a.escalation}" if a.escalation else "")
    retry = ActionSpec(RETRY_BUDGET, names, book.retry_cap, ttl, f"{why}: cap retries into the top targets")
    reroute = ActionSpec(REROUTE, names, 1.0, ttl, f"{why}: route away from the failing replicas")
    if a.band == ELEVATED:
        plan = [retry] + ([reroute] if a.agents_lost else [])
    else:
        shedding = mechanism not in (TIMEOUT_PROPAGATION, FAILING_DEPENDENCY, LOAD_REDISTRIBUTION)
        shed_steps = a.escalation if shedding else a.escalation - 1
        shed = [ActionSpec(SHED_LOAD, tuple(entries), shed_magnitude(book, shed_steps), ttl,
                           f"{why}: shed external load at the entry agents")] \
            if entries and shed_steps >= 0 else []
        plan = [retry] if a.loops else []
        if mechanism in (TIMEOUT_PROPAGATION, FAILING_DEPENDENCY):
            links = _breaker_links(top, book.breaker_on)
            if links:
                plan.append(ActionSpec(CIRCUIT_BREAKER, tuple(dict.fromkeys(x.callee for x in links)), 1.0,
                                       book.breaker_ttl_s, f"{why}: open breakers with fallback", links))
        elif mechanism == RETRY_STORM:
            plan += [*shed, retry]
        elif mechanism == LOAD_REDISTRIBUTION:
            plan += [ActionSpec(SCALE_OUT, names[:1], book.scale_k, ttl, f"{why}: scale out the top target"),
                     reroute]
        else:
            plan += [retry, *shed]
        if not shedding:
            plan += shed
    held = {x.key for x in active}
    out: list[ActionSpec] = []
    for spec in plan:
        if spec.key not in held:
            held.add(spec.key)
            out.append(spec)
    return out
