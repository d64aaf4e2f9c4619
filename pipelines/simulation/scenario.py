"""Scenarios: a fleet, a plan of trigger episodes, and the labels of what happened.

A scenario runs a sequence of episodes on one fleet. Each episode starts from the healthy
steady state (as after an operator restart), runs calmly, fires one trigger of a failure
mechanism, and observes. An episode whose unhealthy fraction stays at or above
``cascade_fraction`` for ``min_cascade_s`` is a cascade (onset = first tick of that run);
otherwise the trigger fizzled. Labels come from the same telemetry the scenario emits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.simulation.fleet import Fleet, Physics, TickEffects, unhealthy
from pipelines.simulation.graphs import build_graph

MECHANISMS = ("retry_storm", "load_redistribution", "timeout_propagation")

# Physics each mechanism runs under, and the range of trigger magnitudes it draws from
# (severity 0 -> low end, 1 -> high end; the ranges straddle the cascade threshold).
_MECHANISM_PHYSICS = {
    "retry_storm": dict(max_retries=3),
    "load_redistribution": dict(max_retries=0, crash_after=3.0, headroom=(0.05, 0.6)),
    "timeout_propagation": dict(max_retries=1),
}
_MAGNITUDE = {
    "retry_storm": (1.0, 2.2),  # external load multiplier on the root services
    "load_redistribution": (0.05, 0.7),  # fraction of the root service's replicas killed
    "timeout_propagation": (0.0, 0.15),  # seconds of extra latency on the root services
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
    episode_s: tuple[float, float] = (150.0, 300.0)
    calm_s: tuple[float, float] = (40.0, 80.0)
    trigger_s: tuple[float, float] = (15.0, 40.0)  # how long a trigger holds at full strength
    ramp_s: tuple[float, float] = (20.0, 60.0)  # how long it takes to build up (precursors)
    pressure: tuple[float, float] = (0.0, 0.25)  # background load growth before the trigger
    severities: tuple[float, ...] = ()  # per episode in [0, 1]; drawn when empty
    cascade_fraction: float = 0.1
    min_cascade_s: float = 5.0
    services_per_agent: float = 0.2
    physics: Physics = field(default_factory=Physics)
    # applied after each mechanism's own physics, e.g. (("max_retries", 0),)
    physics_overrides: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Episode:
    start_s: float
    end_s: float
    mechanism: str
    trigger_s: float
    trigger_end_s: float
    ramp_s: float
    magnitude: float
    severity: float
    root_services: tuple[int, ...]
    pressure: float = 0.0  # extra external load reached (linearly) by the trigger's start


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
    """Runs a fleet through its episodes, tick by tick."""

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
        self.fleet = Fleet(self.graph, cfg.n_agents, cfg.physics, self.rng)
        self.agents = agent_ids(cfg.n_agents)
        # static columns of every tick's telemetry table, built once
        self.agent_array = pa.array(self.agents, pa.string())
        self.tenant_array = pa.array([cfg.tenant] * cfg.n_agents, pa.string())
        self.call_dst_array = self.agent_array.take(pa.array(self.fleet.e_dst))
        self.call_dst_names = [self.agents[j] for j in self.fleet.e_dst]
        per_agent = np.bincount(self.fleet.e_src, minlength=cfg.n_agents)
        self.call_offsets = pa.array(np.concatenate([[0], np.cumsum(per_agent)]).astype(np.int32))
        self.episodes = self._plan()
        self.labels: list[EpisodeLabel] = []
        self.unhealthy_counts = np.zeros(0, dtype=np.int64)

    # -- planning ------------------------------------------------------------------------
    def _plan(self) -> list[Episode]:
        cfg, rng, eps, t = self.cfg, self.rng, [], 0.0
        while t < cfg.duration_s:
            length = min(rng.uniform(*cfg.episode_s), cfg.duration_s - t)
            mech = cfg.mechanisms[len(eps) % len(cfg.mechanisms)] if cfg.severities else \
                str(rng.choice(cfg.mechanisms))
            sev = cfg.severities[len(eps) % len(cfg.severities)] if cfg.severities else rng.uniform()
            lo, hi = _MAGNITUDE[mech]
            trig = t + min(rng.uniform(*cfg.calm_s), 0.3 * length)
            dur = rng.uniform(*cfg.trigger_s)
            ramp = rng.uniform(*cfg.ramp_s)
            pressure = rng.uniform(*cfg.pressure)
            eps.append(Episode(t, t + length, mech, trig, trig + ramp + dur, ramp,
                               lo + sev * (hi - lo), float(sev), self._roots(mech), pressure))
            t += length
        return eps

    def _roots(self, mechanism: str) -> tuple[int, ...]:
        g, reps = self.graph, self.fleet.replicas
        if mechanism == "retry_storm":  # a traffic surge on every entry service
            return tuple(int(s) for s in np.flatnonzero(g.external > 0))
        if mechanism == "load_redistribution":  # replicas of the biggest service crash
            return (int(np.argmax(reps)),)
        # a slow dependency deep in the graph: the most depended-on service without callees
        callees = np.asarray(g.fanout.sum(axis=0)).ravel()
        leaves = np.flatnonzero(np.diff(g.fanout.indptr) == 0)
        return (int(leaves[np.argmax(callees[leaves])]),)

    def _effects(self, ep: Episode, t: float) -> TickEffects:
        s = self.graph.n_services
        # the fleet's load grows towards the trigger (a busy hour): less headroom left
        growth = ep.pressure * min(1.0, (t - ep.start_s) / max(ep.trigger_s - ep.start_s, 1.0))
        fx = TickEffects(np.full(s, 1.0 + growth), np.zeros(s))
        if not (ep.trigger_s <= t < ep.trigger_end_s):
            return fx
        roots = list(ep.root_services)
        if ep.mechanism == "retry_storm":
            fx.load_mult[roots] *= 1.0 + (ep.magnitude - 1.0) * self._ramp(ep, t)
        elif ep.mechanism == "timeout_propagation":
            fx.extra_latency[roots] = ep.magnitude * self._ramp(ep, t)
        else:  # load_redistribution: the doomed replicas crash one after another
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
        k = max(1, int(round(ep.magnitude * len(members))))
        return np.random.default_rng([self.cfg.seed, int(ep.start_s)]).permutation(members)[:k]

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

    # -- running -------------------------------------------------------------------------
    def ticks(self) -> Iterator[tuple[float, dict[str, np.ndarray]]]:
        """Yield (epoch seconds, telemetry arrays) per tick; fills ``labels`` at the end."""
        cfg = self.cfg
        counts: list[int] = []
        n_ticks = int(round(cfg.duration_s / cfg.tick_s))
        ep_i, ep = 0, self.episodes[0]
        roots = self._root_mask(ep)
        self.fleet.reset(self._physics(ep))
        for k in range(n_ticks):
            t = k * cfg.tick_s
            while t >= ep.end_s and ep_i + 1 < len(self.episodes):
                ep_i += 1
                ep = self.episodes[ep_i]
                roots = self._root_mask(ep)
                self.fleet.reset(self._physics(ep))
            tel = self.fleet.step(t, self._effects(ep, t), dt=cfg.tick_s)
            sick = unhealthy(tel["error_rate"], tel["latency_p99_ms"], self.fleet.physics.timeout)
            counts.append(int(sick.sum() - sick[roots].sum()))
            yield cfg.start_epoch_s + t, tel
        self.unhealthy_counts = np.asarray(counts, dtype=np.int64)
        self.labels = [self._label(ep) for ep in self.episodes]

    def _physics(self, ep: Episode) -> Physics:
        return self.cfg.physics.with_(**_MECHANISM_PHYSICS[ep.mechanism]).with_(
            **dict(self.cfg.physics_overrides))

    def _label(self, ep: Episode) -> EpisodeLabel:
        cfg = self.cfg
        # searched from the episode's start, not the trigger's: the growing background load
        # alone can tip agents with little headroom over first, and that onset is real
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
