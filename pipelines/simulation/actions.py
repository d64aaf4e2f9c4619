"""Interventions in simulator terms: actions on services, agents and call links, and the book
that turns the actions in force at a tick into the ``Controls`` a ``Fleet`` applies.

- ``shed_load``: external load at the entry ``services`` times (1 - magnitude).
- ``retry_budget``: calls into ``services`` are retried at most ``int(magnitude)`` times
  (a cap: never more than the physics' ``max_retries``), external clients' calls included.
- ``circuit_breaker``: calls on the ``links`` (caller service, callee service) are not made;
  magnitude 1: the caller answers degraded from a fallback, 0: those calls fail fast.
  Where both kinds cover one link, the fallback wins.
- ``scale_out``: ``int(magnitude)`` more replicas of each of ``services``, taking load
  ``Physics.startup_s`` after ``start_s``. The fleet's agent set (and so the telemetry
  schema) is fixed, so a service of ``r`` replicas scaled out by ``k`` is modelled as its
  ``r`` agents with ``(r + k) / r`` times their capacity, workers and queue limit.
- ``reroute``: the ``agents`` get no new calls (they stay up and report); their load moves
  to their service's other replicas, except where a caller would be left with none.

An action is in force from ``start_s`` until ``start_s + ttl_s`` (seconds since the
scenario's start), or until it is cancelled (a rollback), whichever comes first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.incidents.interventions import CIRCUIT_BREAKER, REROUTE, RETRY_BUDGET, SCALE_OUT, SHED_LOAD
from pipelines.simulation.fleet import Controls, Fleet

ACTION_KINDS = (SHED_LOAD, RETRY_BUDGET, CIRCUIT_BREAKER, SCALE_OUT, REROUTE)
_TARGETS = {REROUTE: "agents", CIRCUIT_BREAKER: "links"}  # what each kind acts on (else services)
_MAGNITUDE_OK: dict[str, Callable[[float], bool]] = {
    SHED_LOAD: lambda m: 0.0 < m <= 1.0,  # fraction shed
    RETRY_BUDGET: lambda m: m >= 0.0,  # retries allowed
    CIRCUIT_BREAKER: lambda m: m in (0.0, 1.0),  # 1: fallback, 0: fail fast
    SCALE_OUT: lambda m: m >= 1.0,  # replicas added
    REROUTE: lambda m: True,  # unused
}


@dataclass(frozen=True)
class Action:
    """One intervention on the simulated fleet (times in seconds since the scenario's start)."""

    kind: str
    start_s: float
    ttl_s: float
    magnitude: float
    services: tuple[int, ...] = ()  # service indices (shed_load, retry_budget, scale_out)
    agents: tuple[int, ...] = ()  # agent indices (reroute)
    links: tuple[tuple[int, int], ...] = ()  # (caller service, callee service) (circuit_breaker)
    id: str = ""  # empty: derived from the content

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"unknown action kind {self.kind!r}; known: {', '.join(ACTION_KINDS)}")
        if not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {self.ttl_s}")
        if not _MAGNITUDE_OK[self.kind](self.magnitude):
            raise ValueError(f"{self.kind} magnitude out of range: {self.magnitude}")
        field = _TARGETS.get(self.kind, "services")
        if not getattr(self, field):
            raise ValueError(f"{self.kind} needs {field}")
        if not self.id:  # same content, same id
            key = repr((self.kind, self.start_s, self.ttl_s, self.magnitude, self.services, self.agents,
                        self.links))
            object.__setattr__(self, "id", f"{self.kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


class ActionBook:
    """The scheduled and active actions of one fleet, and what they impose at a tick."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}
        self._stop: dict[str, float] = {}  # id -> when it lapses or was cancelled

    def __contains__(self, action_id: str) -> bool:
        return action_id in self._actions

    def __len__(self) -> int:
        return len(self._actions)

    def add(self, action: Action) -> None:
        """Schedule ``action``; its id must be new."""
        if action.id in self._actions:
            raise ValueError(f"action {action.id!r} already scheduled")
        self._actions[action.id] = action
        self._stop[action.id] = action.start_s + action.ttl_s

    def cancel(self, action_id: str, at_s: float) -> None:
        """Stop an action at ``at_s`` (a rollback); KeyError if it was never scheduled."""
        self._stop[action_id] = min(self._stop[action_id], at_s)

    def active(self, t: float) -> list[Action]:
        """The actions in force at ``t``, in the order they were added."""
        return [a for a in self._actions.values() if a.start_s <= t < self._stop[a.id]]

    def controls(self, t: float, fleet: Fleet) -> Controls | None:
        """What the actions in force at ``t`` change on the fleet's tick (None: nothing)."""
        acts = self.active(t)
        startup = fleet.physics.startup_s
        acts = [a for a in acts if a.kind != SCALE_OUT or t >= a.start_s + startup]
        if not acts:
            return None
        by_kind = {k: [a for a in acts if a.kind == k] for k in ACTION_KINDS}
        return Controls(ext_mult=_shed(by_kind[SHED_LOAD], fleet),
                        retries=_retries(by_kind[RETRY_BUDGET], fleet),
                        **_breakers(by_kind[CIRCUIT_BREAKER], fleet),
                        scale=_scale(by_kind[SCALE_OUT], fleet),
                        drained=_drained(by_kind[REROUTE], fleet))


def _shed(acts: list[Action], fleet: Fleet) -> np.ndarray | None:
    """Share of external load let into each service."""
    if not acts:
        return None
    mult = np.ones(fleet.graph.n_services)
    for a in acts:
        mult[list(a.services)] *= 1.0 - a.magnitude
    return mult


def _retries(acts: list[Action], fleet: Fleet) -> np.ndarray | None:
    """Retries allowed on calls into each agent: the smallest budget in force."""
    if not acts:
        return None
    retries = np.full(fleet.n, float(fleet.physics.max_retries))
    for a in acts:
        into = np.isin(fleet.service, a.services)
        retries[into] = np.minimum(retries[into], float(int(a.magnitude)))
    return retries


def _breakers(acts: list[Action], fleet: Fleet) -> dict[str, np.ndarray | None]:
    """Call edges cut by open breakers, and those answered from a fallback."""
    if not acts:
        return {"open_edges": None, "fallback": None}
    s = fleet.graph.n_services
    edge_link = fleet.service[fleet.e_src] * s + fleet.service[fleet.e_dst]
    open_edges = np.zeros(len(edge_link), dtype=bool)
    fallback = np.zeros(len(edge_link), dtype=bool)
    for a in acts:
        hit = np.isin(edge_link, [caller * s + callee for caller, callee in a.links])
        open_edges |= hit
        if a.magnitude >= 1.0:
            fallback |= hit
    return {"open_edges": open_edges, "fallback": fallback}


def _scale(acts: list[Action], fleet: Fleet) -> np.ndarray | None:
    """Capacity multiplier of each agent: (r + k) / r for k replicas added to r."""
    if not acts:
        return None
    added = np.zeros(fleet.graph.n_services)
    for a in acts:
        added[list(a.services)] += int(a.magnitude)
    reps = fleet.replicas.astype(float)
    return ((reps + added) / reps)[fleet.service]


def _drained(acts: list[Action], fleet: Fleet) -> np.ndarray | None:
    """Agents that get no new calls."""
    if not acts:
        return None
    drained = np.zeros(fleet.n, dtype=bool)
    for a in acts:
        drained[list(a.agents)] = True
    return drained
