"""Vectorised fleet physics: queues, capacity, timeouts, retries, crashes and load shifting.

One ``Fleet`` holds per-agent and per-call-edge numpy arrays; ``step`` advances one tick.
Calls between services are spread over the healthy replicas of the callee within a fixed
subset per caller replica (deterministic subsetting), so when a replica crashes its load
shifts to its surviving peers (Motter & Lai style redistribution), and callers retry
failed or timed-out calls (retry amplification feeds load back: metastable retry storms).
Workers blocked on slow dependencies reduce a caller's throughput, so timeouts propagate
up the call graph. Below saturation an agent's latency grows with its utilisation
(M/M/1 queueing delay, ``max_rho``), so an agent nearing its capacity shows it before any
backlog forms. Crashed agents restart after ``restart_after`` and come up fresh.

Operators' interventions reach a tick as ``Controls`` (built by
``pipelines.simulation.actions.ActionBook``): shed external load, per-callee retry caps,
open circuit breakers on call edges, extra capacity (scale-out) and drained replicas
(reroute). Without controls a tick is computed exactly as before, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipelines.simulation.graphs import ServiceGraph, assign_replicas

UNHEALTHY_ERROR_RATE = 0.5
SETTLE_TICKS = 32  # silent ticks that bring a reset fleet to its steady state


@dataclass(frozen=True)
class Physics:
    """Parameters of the fleet model (times in seconds)."""

    headroom: tuple[float, float] = (0.3, 0.8)  # alpha: capacity = (1 + alpha) * steady load
    service_time: tuple[float, float] = (0.002, 0.01)
    timeout: float = 1.0  # client timeout on every call
    max_retries: int = 2  # retries per failed call (0 = retries off)
    queue_limit: float = 2.0  # queue capacity, in seconds of service at full capacity
    worker_headroom: float = 4.0  # workers = (1 + h) * capacity * steady latency
    crash_after: float = float("inf")  # queue over half full this long -> crash
    restart_after: float = float("inf")  # a crashed agent restarts after this long
    noise: float = 0.03  # relative noise on reported gauges
    subset_size: int = 8  # callee replicas each caller replica talks to
    entry_headroom: float = 0.0  # extra alpha of the services that take external load
    max_rho: float = 0.0  # utilisation cap of the below-saturation queueing delay (0: none)
    startup_s: float = 20.0  # a replica added by a scale-out takes load this long after the order

    def with_(self, **changes: float) -> Physics:
        """A copy with some parameters changed."""
        return replace(self, **changes)


@dataclass
class TickEffects:
    """What triggers impose on one tick (per service multipliers / additions)."""

    load_mult: np.ndarray  # (S,) external load multiplier
    extra_latency: np.ndarray  # (S,) seconds added to own service time
    kill: np.ndarray | None = None  # (N,) bool, agents crashed this tick (down until restarted)


@dataclass(frozen=True)
class Controls:
    """What active interventions change on one tick; ``None`` leaves that part as it is."""

    ext_mult: np.ndarray | None = None  # (S,) share of external load let in (load shedding)
    retries: np.ndarray | None = None  # (N,) retries allowed on calls into each agent
    open_edges: np.ndarray | None = None  # (E,) bool: call edge cut by an open breaker
    fallback: np.ndarray | None = None  # (E,) bool, given with open_edges: caller answers degraded
    scale: np.ndarray | None = None  # (N,) capacity, workers and queue multiplier (scale-out)
    drained: np.ndarray | None = None  # (N,) bool: gets no new calls (reroute)


NO_CONTROLS = Controls()
FAILED_LOG = np.log(1e-12)  # log success probability of a call that cannot succeed


class Fleet:
    """Per-agent state of a simulated fleet over one service graph."""

    def __init__(self, graph: ServiceGraph, n_agents: int, physics: Physics,
                 rng: np.random.Generator):
        self.graph = graph
        self.rng = rng
        svc_load = graph.steady_load()
        reps = assign_replicas(svc_load, n_agents)
        self.n = n_agents
        self.service = np.repeat(np.arange(graph.n_services), reps)  # agent -> service
        first = np.concatenate([[0], np.cumsum(reps)[:-1]])
        self.rank = np.arange(n_agents) - first[self.service]  # index within its service
        self.replicas = reps
        self._build_edges(reps, first, physics.subset_size)
        self.steady_load = self._steady_agent_load()
        self.base_service_time = rng.uniform(*physics.service_time, size=n_agents)
        self._headroom_rank = rng.uniform(size=n_agents)  # alpha = lo + rank * (hi - lo)
        self.physics = physics
        self.reset(physics)

    # -- structure -------------------------------------------------------------------
    def _build_edges(self, reps: np.ndarray, first: np.ndarray, subset: int) -> None:
        f = self.graph.fanout.tocoo()
        src, dst, fan = [], [], []
        for a, b, w in zip(f.row, f.col, f.data):
            k = min(subset, int(reps[b]))
            offset = int(self.rng.integers(reps[b]))
            callers = first[a] + np.arange(reps[a])
            # caller replica r talks to callee replicas (offset + r*k + 0..k-1) mod reps[b]
            idx = (offset + np.arange(reps[a])[:, None] * k + np.arange(k)[None, :]) % reps[b]
            src.append(np.repeat(callers, k))
            dst.append((first[b] + idx).ravel())
            fan.append(np.full(reps[a] * k, w))
        if src:
            self.e_src = np.concatenate(src)
            self.e_dst = np.concatenate(dst)
            self.e_fan = np.concatenate(fan)
        else:
            self.e_src = self.e_dst = np.zeros(0, dtype=np.int64)
            self.e_fan = np.zeros(0)
        # one group per (caller agent, callee service): shares are normalised inside it
        key = self.e_src * self.graph.n_services + self.service[self.e_dst]
        order = np.lexsort((self.e_dst, key))
        self.e_src, self.e_dst, self.e_fan = self.e_src[order], self.e_dst[order], self.e_fan[order]
        _, self.e_group = np.unique(key[order], return_inverse=True)

    def _steady_agent_load(self) -> np.ndarray:
        """Requests/s per agent with everyone up, by iterating the routing (exact after
        as many rounds as the DAG is deep)."""
        group_size = np.bincount(self.e_group)[self.e_group]
        self._all_up_share = 1.0 / group_size
        up = np.ones(self.n)
        share = self._all_up_share
        svc_w = np.bincount(self.service, up, minlength=self.graph.n_services)
        ext = self.graph.external[self.service] / svc_w[self.service]
        load = ext.copy()
        for _ in range(self.graph.n_services + 1):
            nxt = ext + np.bincount(self.e_dst, load[self.e_src] * self.e_fan * share, minlength=self.n)
            if np.allclose(nxt, load, rtol=1e-12, atol=1e-12):
                break
            load = nxt
        return load

    def _shares(self, up: np.ndarray, drained: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Each edge's share of its (caller, callee service) group, and whether the group
        has any healthy replica left (None: all routed, the common all-up case)."""
        if drained is None and up.all():
            return self._all_up_share, None
        e_w = _drain(up[self.e_dst].astype(float), None if drained is None else drained[self.e_dst],
                     self.e_group)
        den = np.bincount(self.e_group, e_w)[self.e_group]
        routed = den > 0
        return np.divide(e_w, den, out=np.zeros_like(e_w), where=routed), routed

    def _external(self, fx: TickEffects, up: np.ndarray, c: Controls) -> tuple[np.ndarray, np.ndarray]:
        """External requests/s let into each agent's service (after shedding), and each
        agent's share of them: clients spread calls evenly over healthy replicas."""
        weight = _drain(up.astype(float), c.drained, self.service)
        svc_w = np.bincount(self.service, weight, minlength=self.graph.n_services)[self.service]
        ext_share = np.divide(weight, svc_w, out=np.zeros(self.n), where=svc_w > 0)
        load = self.graph.external * fx.load_mult
        if c.ext_mult is not None:
            load = load * c.ext_mult
        self._ext_service = load
        return load[self.service], ext_share

    def _provisioned(self, scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Capacity, workers and queue limit per agent, multiplied where scaled out."""
        if scale is None:
            return self.capacity, self.workers, self.queue_limit
        return self.capacity * scale, self.workers * scale, self.queue_limit * scale

    # -- state -----------------------------------------------------------------------
    def reset(self, physics: Physics) -> None:
        """Back to the healthy steady state under (possibly new) physics."""
        self.physics = physics
        p = physics
        lo, hi = p.headroom
        self.alpha = lo + self._headroom_rank * (hi - lo)
        # stateless entry services (gateways, frontends) are provisioned for surges: the
        # bottleneck of a fleet is its shared backends
        entry = self.graph.external[self.service] > 0
        self.alpha = np.where(entry, self.alpha + p.entry_headroom, self.alpha)
        self.capacity = (1.0 + self.alpha) * np.maximum(self.steady_load, 1e-3)
        self.queue_limit = p.queue_limit * self.capacity
        self.queue = np.zeros(self.n)
        self.up_at = np.full(self.n, -np.inf)  # agent is up when t >= up_at
        self.was_up = np.ones(self.n, dtype=bool)
        self.overloaded_for = np.zeros(self.n)
        self.served = self.steady_load.copy()
        self.latency = self.base_service_time.copy()
        self.fail_prob = np.zeros(self.n)
        self.workers = np.full(self.n, np.inf)
        self.degraded = np.zeros(self.n)  # share of answers degraded by a breaker's fallback
        calm = TickEffects(np.ones(self.graph.n_services), np.zeros(self.graph.n_services))
        for _ in range(SETTLE_TICKS):  # let downstream latency settle
            self.step(-1.0, calm, emit=False)
        self.workers = (1.0 + p.worker_headroom) * self.capacity * self.latency
        self.queue[:] = 0.0
        self.overloaded_for[:] = 0.0

    def restart(self, t: float, agents: np.ndarray | None = None) -> None:
        """Bring crashed agents (all, or those in the ``agents`` mask) back up at ``t``."""
        down = self.up_at > t if agents is None else agents & (self.up_at > t)
        self.up_at = np.where(down, t, self.up_at)
        self.overloaded_for[down] = 0.0

    # -- one tick --------------------------------------------------------------------
    def step(self, t: float, fx: TickEffects, dt: float = 1.0, emit: bool = True,
             controls: Controls | None = None) -> dict[str, np.ndarray] | None:
        """Advance one tick of ``dt`` seconds under the operators' ``controls`` (None: no
        intervention); return the agents' telemetry if ``emit``."""
        p, n, c = self.physics, self.n, controls or NO_CONTROLS
        if fx.kill is not None:
            self.up_at = np.where(fx.kill, np.inf, self.up_at)
        up = t >= self.up_at
        back = up & ~self.was_up  # restarted this tick: comes up fresh, not with a dead one's state
        self.was_up = up
        if back.any():
            self.fail_prob = np.where(back, 0.0, self.fail_prob)
            self.latency = np.where(back, self.base_service_time, self.latency)
        retries = p.max_retries if c.retries is None else c.retries  # per callee under a retry budget
        # A call fails after all attempts with fail_prob**(retries+1); attempts per call
        # are the geometric sum 1 + p + ... + p**retries.
        pf = self.fail_prob
        fail_all = pf ** (retries + 1)
        attempts = np.where(pf < 1.0, (1.0 - fail_all) / np.maximum(1.0 - pf, 1e-12), retries + 1.0)
        prov = capacity, workers, queue_limit = self._provisioned(c.scale)
        share, routed = self._shares(up, c.drained)
        fan_share = self.e_fan * share
        # an open breaker makes no calls on its edges: no load downstream, nobody waits on them
        call_share = fan_share if c.open_edges is None else np.where(c.open_edges, 0.0, fan_share)
        e_count = self.served[self.e_src] * call_share * attempts[self.e_dst]  # calls/s, retries too
        # external clients: spread over the entry service's healthy replicas, with retries
        ext, ext_share = self._external(fx, up, c)
        rate = ext * ext_share * attempts + np.bincount(self.e_dst, e_count, minlength=n)
        arrivals = self.rng.poisson(rate * dt).astype(float) if emit else rate * dt
        # throughput: own capacity, and workers blocked on slow dependencies
        waited = np.minimum(self.latency, p.timeout) * attempts  # per call, retries included
        down_lat = np.bincount(self.e_src, call_share * waited[self.e_dst], minlength=n)
        # injected latency (a slow disk or link) holds workers longer but costs no CPU
        own_time = self.base_service_time + fx.extra_latency[self.service]
        mu = np.minimum(capacity, workers / (own_time + down_lat)) * up
        backlog = self.queue + arrivals
        served = np.minimum(backlog, mu * dt)
        queue = backlog - served
        rejected = np.maximum(queue - queue_limit, 0.0)
        queue -= rejected
        wait = np.divide(queue, mu, out=np.full(n, 10.0 * p.timeout), where=mu > 0)
        # queueing delay below saturation (M/M/1: own time x rho / (1 - rho)) from the offered
        # load: latency climbs smoothly as an agent nears its capacity, before any backlog
        rho = np.minimum(np.divide(rate, mu, out=np.ones(n), where=mu > 0), p.max_rho)
        latency = own_time * (1.0 + rho / (1.0 - rho)) + wait + down_lat
        # downstream failure after retries, unroutable calls and open breakers
        call_log_ok = self._call_log_ok(fan_share, routed, fail_all, c)
        down_fail = 1.0 - np.exp(np.bincount(self.e_src, call_log_ok, minlength=n))
        reject_frac = np.divide(rejected, backlog, out=np.zeros(n), where=backlog > 0)
        error = np.where(up, 1.0 - (1.0 - reject_frac) * (1.0 - down_fail), 1.0)
        timeout_prob = 1.0 / (1.0 + np.exp(-np.clip((latency - p.timeout) / (0.1 * p.timeout), -50, 50)))
        self.fail_prob = np.where(up, 1.0 - (1.0 - error) * (1.0 - timeout_prob), 1.0)
        # crashes: a queue held above half its limit (memory pressure) takes an agent down
        self.overloaded_for = np.where(up & (queue >= 0.5 * queue_limit), self.overloaded_for + dt, 0.0)
        crash = up & (self.overloaded_for >= p.crash_after)
        self.up_at = np.where(crash, t + p.restart_after, self.up_at)
        queue[crash | ~up] = 0.0
        self.queue, self.served, self.latency = queue, served / dt, latency
        self.degraded = self._degraded(fan_share, c)
        self._ext_agent, self._retries = ext * ext_share, retries
        if not emit:
            return None
        return self._telemetry(arrivals, dt, queue, latency, wait, error, up & ~crash, e_count * dt, prov)

    def _call_log_ok(self, fan_share: np.ndarray, routed: np.ndarray | None, fail_all: np.ndarray,
                     c: Controls) -> np.ndarray:
        """Per edge, the log of its calls' success after retries, weighted by their share of
        the caller's requests: unroutable calls and fail-fast breakers fail; a fallback
        breaker's calls never fail (they are answered degraded)."""
        log_ok = np.log(np.clip(1.0 - fail_all, 1e-12, 1.0))
        contrib = fan_share * log_ok[self.e_dst]
        if routed is not None:
            contrib = np.where(routed, contrib, self.e_fan * FAILED_LOG)
        if c.open_edges is not None:
            contrib = np.where(c.open_edges, np.where(c.fallback, 0.0, self.e_fan * FAILED_LOG), contrib)
        return contrib

    def _degraded(self, fan_share: np.ndarray, c: Controls) -> np.ndarray:
        """Share of each agent's answers that are degraded: one of its calls, or one further
        down (one hop per tick), hit a breaker's fallback; combined like failures."""
        if c.open_edges is None and not self.degraded.any():
            return self.degraded
        hit = self.degraded[self.e_dst]
        if c.open_edges is not None:  # open: a fallback degrades, a fail-fast call fails instead
            hit = np.where(c.open_edges, c.fallback.astype(float), hit)
        log_ok = np.log(np.clip(1.0 - hit, 1e-12, 1.0))
        return 1.0 - np.exp(np.bincount(self.e_src, fan_share * log_ok, minlength=self.n))

    def external_outcome(self) -> tuple[float, float, float]:
        """External requests/s of the last tick: let in (after shedding), failed after the
        clients' retries (sent to a service with no healthy replica: failed too), and of the
        rest those answered degraded from a breaker's fallback."""
        let_in = float(self._ext_service.sum())
        ok = self._ext_agent * (1.0 - self.fail_prob ** (self._retries + 1))
        return let_in, let_in - float(ok.sum()), float((ok * self.degraded).sum())

    def _telemetry(self, arrivals, dt, queue, latency, wait, error, up, e_count,
                   prov: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        p, n, rng = self.physics, self.n, self.rng
        capacity, workers, queue_limit = prov
        jitter = 1.0 + p.noise * rng.standard_normal((4, n))
        p50 = np.where(up, latency - 0.3 * wait, 0.0) * jitter[0]
        p99 = np.where(up, 1.8 * p50 + 2.0 * wait, 0.0) * np.abs(jitter[1])
        err = np.clip(error + p.noise * 0.1 * rng.standard_normal(n) * up, 0.0, 1.0)
        little = arrivals / dt * np.minimum(latency, p.timeout)  # Little's law
        in_flight = np.where(up, np.minimum(workers, little), 0.0)
        e_err = np.minimum(e_count, e_count * self.fail_prob[self.e_dst])
        # rounded as reported, so labels computed from these match the files exactly
        p50_ms = np.round(np.maximum(p50, 0.0) * 1e3, 3)
        return {
            "latency_p50_ms": p50_ms,
            "latency_p99_ms": np.maximum(np.round(p99 * 1e3, 3), p50_ms),
            "error_rate": np.round(err, 4),
            "request_count": arrivals,
            "cpu": np.round(np.clip(self.served / capacity * jitter[2], 0.0, 1.0) * up, 4),
            "memory": np.round(np.clip((0.3 + 0.5 * queue / np.maximum(queue_limit, 1e-9))
                                       * jitter[3], 0.0, 1.0), 4),
            "queue_depth": queue,
            "in_flight": in_flight,
            "up": up,
            "edge_count": e_count,
            "edge_errors": e_err,
            "edge_latency_ms": np.minimum(self.latency[self.e_dst], p.timeout) * 1e3,
        }


def _drain(weight: np.ndarray, drained: np.ndarray | None, group: np.ndarray) -> np.ndarray:
    """Routing weights with drained targets at 0, except in a group where every routable
    target is drained: that group keeps routing to them (never into nothing)."""
    if drained is None:
        return weight
    kept = np.where(drained, 0.0, weight)
    return np.where(np.bincount(group, kept)[group] > 0, kept, weight)


def unhealthy(error_rate: np.ndarray, latency_p99_ms: np.ndarray, timeout_s: float) -> np.ndarray:
    """The health rule the labels use: failing most requests, or p99 beyond the timeout."""
    return (error_rate >= UNHEALTHY_ERROR_RATE) | (latency_p99_ms >= timeout_s * 1e3)
