"""Scenarios: a fleet, a continuous timeline of trigger episodes, and the labels of what
happened.

A scenario runs one fleet under one set of physics on a single continuous timeline: the
fleet is never reset. External load drifts slowly (a busy hour comes and goes). Each
episode is a quiet stretch, then one trigger of a failure mechanism that builds up
gradually (a traffic surge that grows, a dependency that slows down, replicas dying one by
one) and holds, then recovery: the trigger ends, crashed agents restart, and if the fleet
is still unhealthy ``operator_after_s`` after the trigger ended, an operator sheds external
load and restarts what is down, then restores the load slowly. The next episode starts
once the fleet has been healthy for ``recovery_s`` at full load, so nothing in the
telemetry marks an episode boundary. Trigger magnitudes straddle each mechanism's cascade
threshold (about half of the triggers fizzle).

An episode is a cascade when the unhealthy agents outside the trigger's directly-hit
agents (its roots) stay at or above ``cascade_fraction`` of the fleet for
``min_cascade_s`` (onset = first tick of that run); otherwise the trigger fizzled. Labels
come from the same telemetry the scenario emits.

Interventions: ``act`` schedules an ``Action`` (``pipelines.simulation.actions``) between
ticks, ``cancel`` rolls one back; the fleet obeys them from their start time, the same way
for the same seed and actions. ``ledger`` accounts for the external requests per tick:
offered (with the drift and the trigger's surge) = served ok + degraded + failed + shed,
approximately: the ledger counts expected requests (rates x tick), not the Poisson draws,
and takes the entry agents' failure probability after the tick as the share of external
requests that fail after the clients' retries; requests the operator or a shed_load action
turned away are shed; degraded are the entry agents' successful answers that some call on
the way down took from a breaker's fallback (combined across calls like failures).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from pipelines.simulation.actions import Action, ActionBook
from pipelines.simulation.fleet import Fleet, Physics, TickEffects, unhealthy
from pipelines.simulation.graphs import build_graph

MECHANISMS = ("retry_storm", "load_redistribution", "timeout_propagation")
LEDGER = ("offered", "shed", "failed", "degraded")  # external requests per tick

# One fleet, one physics for the whole timeline: clients retry, overloaded agents crash
# (memory pressure) and are restarted by their orchestrator.
SCENARIO_PHYSICS = Physics(headroom=(0.2, 0.7), max_retries=2, crash_after=5.0, restart_after=30.0,
                           entry_headroom=1.5, max_rho=0.95)
# Range of trigger magnitudes per mechanism (severity 0 -> low end, 1 -> high end); each
# range straddles the mechanism's cascade threshold, so that about half of them fizzle.
_MAGNITUDE = {
    "retry_storm": (1.0, 1.3),  # external load multiplier on the entry services
    "load_redistribution": (0.0, 0.25),  # fraction of the biggest service's replicas killed
    "timeout_propagation": (0.0, 0.11),  # seconds of extra latency on a deep dependency
}


@dataclass(frozen=True)
class ScenarioConfig:
    """Everything that determines a scenario; same config + seed -> same telemetry."""

    n_agents: int = 200
    duration_s: float = 600.0
    tick_s: float = 1.0
    seed: int = 0
    graph: str = "layered"
    tenant: str = "acme"
    start_epoch_s: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    mechanisms: tuple[str, ...] = MECHANISMS
    quiet_s: tuple[float, float] = (30.0, 150.0)  # healthy time before a trigger starts
    ramp_s: tuple[float, float] = (90.0, 240.0)  # how long a trigger takes to build up
    trigger_s: tuple[float, float] = (20.0, 60.0)  # how long it then holds at full strength
    load_swing: tuple[float, float] = (0.0, 0.15)  # amplitude of the slow background load drift
    severities: tuple[float, ...] = ()  # per episode in [0, 1]; drawn when empty
    cascade_fraction: float = 0.1
    min_cascade_s: float = 5.0
    recovery_s: float = 30.0  # healthy this long at full load after a trigger: episode over
    operator_after_s: float = 60.0  # still unhealthy this long after the trigger: shed load
    shed_to: float = 0.5  # external load the operator lets in while shedding
    services_per_agent: float = 0.2
    physics: Physics = SCENARIO_PHYSICS
    # applied to ``physics``, e.g. (("max_retries", 0),)
    physics_overrides: tuple[tuple[str, object], ...] = ()
    max_episodes: int = 0  # 0: unlimited; N: no trigger after the N-th episode ends (quiet)


@dataclass
class Episode:
    """One trigger on the timeline (seconds since the scenario's start); ``end_s`` is known
    once the fleet has recovered (or the scenario ends)."""

    index: int
    start_s: float  # the quiet stretch before the trigger begins here
    mechanism: str
    trigger_s: float
    trigger_end_s: float
    ramp_s: float
    magnitude: float
    severity: float
    root_services: tuple[int, ...]
    end_s: float = float("inf")
    shed_s: float | None = None  # when the operator started shedding load, if it did


@dataclass
class EpisodeLabel:
    """Outcome of one episode (times are epoch seconds)."""

    mechanism: str
    cascade: bool
    trigger_time: float
    trigger_end: float
    magnitude: float
    root_agents: list[str]
    peak_unhealthy: int
    onset: float | None = None
    end: float | None = None
    size: int | None = None
    ongoing_at_episode_end: bool = False


def agent_ids(n: int) -> list[str]:
    return [f"a{i:05d}" for i in range(n)]


class Scenario:
    """Runs a fleet through its episodes, tick by tick, on one continuous timeline."""

    def __init__(self, cfg: ScenarioConfig):
        if cfg.tick_s <= 0 or cfg.duration_s <= 0:
            raise ValueError("tick_s and duration_s must be positive")
        unknown = set(cfg.mechanisms) - set(MECHANISMS)
        if unknown:
            raise ValueError(f"unknown mechanisms {sorted(unknown)}; known: {MECHANISMS}")
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        n_services = max(4, int(round(cfg.n_agents * cfg.services_per_agent)))
        self.graph = build_graph(cfg.graph, n_services, self.rng)
        physics = cfg.physics.with_(**dict(cfg.physics_overrides))
        self.fleet = Fleet(self.graph, cfg.n_agents, physics, self.rng)
        self.agents = agent_ids(cfg.n_agents)
        self._agent_index = {a: i for i, a in enumerate(self.agents)}
        # static columns of every tick's telemetry table, built once
        self.agent_array = pa.array(self.agents, pa.string())
        self.tenant_array = pa.array([cfg.tenant] * cfg.n_agents, pa.string())
        self.call_dst_array = self.agent_array.take(pa.array(self.fleet.e_dst))
        self.call_dst_names = [self.agents[j] for j in self.fleet.e_dst]
        per_agent = np.bincount(self.fleet.e_src, minlength=cfg.n_agents)
        self.call_offsets = pa.array(np.concatenate([[0], np.cumsum(per_agent)]).astype(np.int32))
        # the slow background load: two sinusoids of random phase, periods 15-40 min
        amp = self.rng.uniform(*cfg.load_swing, size=2) / 2
        self._swing = (amp, self.rng.uniform(900.0, 2400.0, size=2), self.rng.uniform(0, 2 * np.pi, size=2))
        self.episodes: list[Episode] = []  # filled as the timeline runs
        self.labels: list[EpisodeLabel] = []
        self.unhealthy_counts = np.zeros(0, dtype=np.int64)
        self.book = ActionBook()
        self._ledger: dict[str, list[float]] = {k: [] for k in LEDGER}

    # -- the fleet's layout and interventions ---------------------------------------------
    def agent_index(self, agent_id: str) -> int:
        """The index of an agent (KeyError if the fleet has no such agent)."""
        return self._agent_index[agent_id]

    def service_of(self, agent_id: str) -> int:
        """The service an agent is a replica of (KeyError if the fleet has no such agent)."""
        return int(self.fleet.service[self.agent_index(agent_id)])

    def entry_services(self) -> tuple[int, ...]:
        """The services that take external load."""
        return tuple(int(s) for s in np.flatnonzero(self.graph.external > 0))

    def agents_of(self, service: int) -> list[str]:
        """The replicas of a service."""
        return [self.agents[i] for i in np.flatnonzero(self.fleet.service == service)]

    def service_links(self) -> list[tuple[int, int]]:
        """The (caller service, callee service) pairs of the call graph, sorted."""
        f = self.graph.fanout.tocoo()
        return sorted(zip(f.row.tolist(), f.col.tolist()))

    def act(self, action: Action) -> None:
        """Schedule an action (before or between ticks); ValueError if it names services,
        agents or links the fleet does not have, or reuses an id."""
        n_services = self.graph.n_services
        if any(not 0 <= s < n_services for s in action.services):
            raise ValueError(f"no such service in {action.services} (the fleet has {n_services})")
        if any(not 0 <= a < self.fleet.n for a in action.agents):
            raise ValueError(f"no such agent in {action.agents} (the fleet has {self.fleet.n})")
        missing = set(action.links) - set(self.service_links())
        if missing:
            raise ValueError(f"no calls on the links {sorted(missing)}")
        self.book.add(action)

    def cancel(self, action_id: str, at_s: float) -> None:
        """Stop an action at ``at_s`` seconds since the start (KeyError if unknown)."""
        self.book.cancel(action_id, at_s)

    @property
    def ledger(self) -> dict[str, np.ndarray]:
        """External requests per tick so far: ``offered``, ``shed``, ``failed``, ``degraded``."""
        return {k: np.asarray(v) for k, v in self._ledger.items()}

    def _account(self, ep: Episode, t: float) -> None:
        """Add the tick's external requests to the ledger (after the fleet's step)."""
        dt = self.cfg.tick_s
        offered = float((self.graph.external * self._load_mult(ep, t, 1.0)).sum())
        let_in, failed, degraded = self.fleet.external_outcome()
        for key, rate in zip(LEDGER, (offered, offered - let_in, failed, degraded)):
            self._ledger[key].append(rate * dt)

    # -- planning ------------------------------------------------------------------------
    def _next_episode(self, start_s: float) -> Episode:
        """The next trigger, drawn when the previous episode is over."""
        cfg, rng, i = self.cfg, self.rng, len(self.episodes)
        mech = cfg.mechanisms[i % len(cfg.mechanisms)] if cfg.severities else str(rng.choice(cfg.mechanisms))
        sev = float(cfg.severities[i % len(cfg.severities)]) if cfg.severities else float(rng.uniform())
        lo, hi = _MAGNITUDE[mech]
        trig = start_s + rng.uniform(*cfg.quiet_s)
        ramp, hold = rng.uniform(*cfg.ramp_s), rng.uniform(*cfg.trigger_s)
        return Episode(i, start_s, mech, trig, trig + ramp + hold, ramp, lo + sev * (hi - lo), sev,
                       self._roots(mech))

    def _roots(self, mechanism: str) -> tuple[int, ...]:
        g, reps = self.graph, self.fleet.replicas
        if mechanism == "retry_storm":  # a traffic surge on every entry service
            return self.entry_services()
        if mechanism == "load_redistribution":  # replicas of the biggest service crash
            return (int(np.argmax(reps)),)
        # a slow dependency deep in the graph: the most depended-on service without callees
        callees = np.asarray(g.fanout.sum(axis=0)).ravel()
        leaves = np.flatnonzero(np.diff(g.fanout.indptr) == 0)
        return (int(leaves[np.argmax(callees[leaves])]),)

    def background_load(self, t: float) -> float:
        """External load multiplier of the slow drift at ``t`` (1 on average)."""
        amp, period, phase = self._swing
        return float(1.0 + (amp * np.sin(2 * np.pi * t / period + phase)).sum())

    def _load_mult(self, ep: Episode, t: float, shed: float) -> np.ndarray:
        """External load multiplier per service: the drift, the operator's ``shed`` and the
        trigger's surge."""
        mult = np.full(self.graph.n_services, self.background_load(t) * shed)
        if ep.mechanism == "retry_storm" and ep.trigger_s <= t < ep.trigger_end_s:
            mult[list(ep.root_services)] *= 1.0 + (ep.magnitude - 1.0) * self._ramp(ep, t)
        return mult

    def _effects(self, ep: Episode, t: float, shed: float) -> TickEffects:
        fx = TickEffects(self._load_mult(ep, t, shed), np.zeros(self.graph.n_services))
        if not (ep.trigger_s <= t < ep.trigger_end_s):
            return fx
        roots = list(ep.root_services)
        if ep.mechanism == "timeout_propagation":
            fx.extra_latency[roots] = ep.magnitude * self._ramp(ep, t)
        elif ep.mechanism == "load_redistribution":  # the doomed replicas crash one after another
            doomed = self._doomed(ep)
            now = int(np.ceil(self._ramp(ep, t) * len(doomed)))
            before = int(np.ceil(self._ramp(ep, t - self.cfg.tick_s) * len(doomed)))
            if now > before:
                fx.kill = np.zeros(self.fleet.n, dtype=bool)
                fx.kill[doomed[before:now]] = True
        return fx

    def _ramp(self, ep: Episode, t: float) -> float:
        """Strength of the trigger at ``t``, from 0 at its start to 1 after the ramp."""
        if t < ep.trigger_s:
            return 0.0
        return 1.0 if ep.ramp_s <= 0 else min(1.0, (t - ep.trigger_s + self.cfg.tick_s) / ep.ramp_s)

    def _doomed(self, ep: Episode) -> np.ndarray:
        """Load redistribution: the replicas the trigger crashes, in crash order."""
        members = np.flatnonzero(np.isin(self.fleet.service, ep.root_services))
        k = int(round(ep.magnitude * len(members)))
        return np.random.default_rng([self.cfg.seed, ep.index]).permutation(members)[:k]

    def _root_mask(self, ep: Episode) -> np.ndarray:
        """The agents the trigger hits directly: the replicas killed (load redistribution)
        or every replica of the surged / slowed services."""
        if ep.mechanism == "load_redistribution":
            mask = np.zeros(self.fleet.n, dtype=bool)
            mask[self._doomed(ep)] = True
            return mask
        return np.isin(self.fleet.service, ep.root_services)

    def root_agents(self, ep: Episode) -> list[str]:
        """The agents the trigger hit directly (excluded when counting the spread)."""
        return [self.agents[i] for i in np.flatnonzero(self._root_mask(ep))]

    TRIGGER_STATE = ("trigger_acting", "trigger_strength", "trigger_growth_per_min", "trigger_age_s",
                     "trigger_holding", *(f"mechanism_{m}" for m in MECHANISMS))

    def trigger_state(self, t: float) -> np.ndarray:
        """What the simulator knows at ``t`` (seconds since the start; after ``ticks``) about
        the acting trigger, in ``TRIGGER_STATE`` order - but not how far it will still grow.
        Strength is in units of the mechanism's magnitude range (0: no effect), growth per
        minute in the same units; all zero when no trigger acts. Ground truth for measuring
        how predictable the labels are (``bench/bench_label_ceiling.py``), never a feature."""
        out = np.zeros(len(self.TRIGGER_STATE))
        ep = next((e for e in reversed(self.episodes) if e.start_s <= t), None)
        if ep is None or not ep.trigger_s <= t < ep.trigger_end_s:
            return out
        lo, hi = _MAGNITUDE[ep.mechanism]
        full = (ep.magnitude - (1.0 if ep.mechanism == "retry_storm" else 0.0)) / (hi - lo)
        ramp = self._ramp(ep, t)
        out[:5] = (1.0, full * ramp, full / ep.ramp_s * 60.0 if ramp < 1.0 else 0.0, t - ep.trigger_s,
                   float(ramp >= 1.0))
        out[5 + MECHANISMS.index(ep.mechanism)] = 1.0
        return out

    # -- running -------------------------------------------------------------------------
    def ticks(self) -> Iterator[tuple[float, dict[str, np.ndarray]]]:
        """Yield (epoch seconds, telemetry arrays) per tick; fills ``episodes`` as they
        happen, ``ledger`` per tick and ``labels`` at the end. Actions scheduled with
        ``act`` between ticks apply from the next tick on."""
        cfg, fleet = self.cfg, self.fleet
        counts: list[int] = []
        self._ledger = {k: [] for k in LEDGER}
        last = False  # the episode running is the last one (``max_episodes``)
        n_ticks = int(round(cfg.duration_s / cfg.tick_s))
        ep = self._next_episode(0.0)
        self.episodes = [ep]
        roots = self._root_mask(ep)
        shed, healthy_for, settled_for, restarted = 1.0, 0.0, 0.0, False
        for k in range(n_ticks):
            t = k * cfg.tick_s
            if t >= ep.trigger_end_s and not restarted:  # the trigger is over: replace the dead
                fleet.restart(t, roots)
                restarted = True
            controls = self.book.controls(t, fleet)
            tel = fleet.step(t, self._effects(ep, t, shed), dt=cfg.tick_s, controls=controls)
            self._account(ep, t)
            sick = unhealthy(tel["error_rate"], tel["latency_p99_ms"], fleet.physics.timeout)
            counts.append(int(sick.sum() - sick[roots].sum()))
            yield cfg.start_epoch_s + t, tel
            if t < ep.trigger_end_s or last:
                continue
            # recovery: healthy at full load for recovery_s ends the episode
            bad = int((sick | ~tel["up"]).sum()) > 0.01 * cfg.n_agents
            healthy_for = 0.0 if bad else healthy_for + cfg.tick_s
            if ep.shed_s is None and bad and t - ep.trigger_end_s >= cfg.operator_after_s:
                ep.shed_s = t  # the operator steps in: shed load, restart what is down
                fleet.restart(t)
            if ep.shed_s is not None:  # shed quickly; restore slowly once healthy for a while
                step = -1.0 / 20.0 if healthy_for < cfg.recovery_s else 1.0 / 120.0
                shed = float(np.clip(shed + step * cfg.tick_s * (1 - cfg.shed_to), cfg.shed_to, 1.0))
            settled_for = settled_for + cfg.tick_s if shed >= 1.0 and not bad else 0.0
            if settled_for >= cfg.recovery_s:
                ep.end_s = t + cfg.tick_s
                last = 0 < cfg.max_episodes <= len(self.episodes)
                if last:  # no more triggers: the fleet stays quiet
                    continue
                ep = self._next_episode(ep.end_s)
                self.episodes.append(ep)
                roots = self._root_mask(ep)
                shed, healthy_for, settled_for, restarted = 1.0, 0.0, 0.0, False
        ep.end_s = min(ep.end_s, cfg.duration_s)
        if ep.trigger_s >= cfg.duration_s:  # the last trigger never started
            self.episodes.pop()
        self.unhealthy_counts = np.asarray(counts, dtype=np.int64)
        self.labels = [self._label(ep) for ep in self.episodes]

    def _label(self, ep: Episode) -> EpisodeLabel:
        cfg = self.cfg
        # searched from the episode's start, not the trigger's: a busy hour alone can tip
        # agents with little headroom over first, and that onset is real
        k0, k1 = int(round(ep.start_s / cfg.tick_s)), int(round(ep.end_s / cfg.tick_s))
        u = self.unhealthy_counts[k0:k1]
        label = EpisodeLabel(ep.mechanism, False, cfg.start_epoch_s + ep.trigger_s,
                             cfg.start_epoch_s + ep.trigger_end_s, ep.magnitude,
                             self.root_agents(ep), int(u.max(initial=0)))
        bad = u >= cfg.cascade_fraction * cfg.n_agents
        need = max(1, int(round(cfg.min_cascade_s / cfg.tick_s)))
        run = np.convolve(bad.astype(int), np.ones(need, dtype=int), "valid")
        starts = np.flatnonzero(run == need)
        if len(starts):
            onset_k = int(starts[0])
            last_k = int(np.flatnonzero(bad)[-1])
            label.cascade = True
            label.onset = cfg.start_epoch_s + (k0 + onset_k) * cfg.tick_s
            label.end = cfg.start_epoch_s + (k0 + last_k) * cfg.tick_s
            label.size = int(u.max())
            label.ongoing_at_episode_end = bool(bad[-1])
        return label

    def labels_document(self) -> dict:
        """The labels file: every cascade and every trigger that fizzled."""
        cfg = self.cfg
        cascades = [asdict(lb) for lb in self.labels if lb.cascade]
        fizzles = [{k: v for k, v in asdict(lb).items()
                    if k in ("mechanism", "trigger_time", "trigger_end", "magnitude",
                             "root_agents", "peak_unhealthy")}
                   for lb in self.labels if not lb.cascade]
        return {
            "schema": "aura.labels/v1",
            "tenant": cfg.tenant,
            "seed": cfg.seed,
            "graph": cfg.graph,
            "n_agents": cfg.n_agents,
            "tick_s": cfg.tick_s,
            "start": cfg.start_epoch_s,
            "end": cfg.start_epoch_s + cfg.duration_s,
            "timeout_ms": cfg.physics.timeout * 1e3,
            "cascade_fraction": cfg.cascade_fraction,
            "min_cascade_s": cfg.min_cascade_s,
            "cascades": cascades,
            "fizzles": fizzles,
        }
