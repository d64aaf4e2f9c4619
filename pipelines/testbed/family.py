"""A family of testbed fleets and runs, drawn from seeds: the fleets the model is measured on.

``draw_run(seed, split, kind)`` draws one run: fleet size (4-24 agents), topology (chain,
fan-out, fan-in, diamond, layered with fan-out 1-3), worker pools and queues, client
timeouts and retry policies, service-time distribution, the entry load, and for a
triggered run one trigger with its ramp (a slowed or failing dependency, a load surge,
replicas killed one by one) after a quiet lead; a ``quiet`` run has no trigger.

The load is set from a capacity model so that the quiet fleet is healthy (its busiest
agent at 25-50 % of its worker pool) and so that a trigger at full strength overloads or
breaks a dependency most entry requests need; whether the fleet then actually breaks is
what the run records (a trigger may still fizzle). Pure and deterministic in the seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field

from pipelines.testbed.spec import AgentConfig, FleetSpec, RetryPolicy, ServiceTime, Trigger, wire

KINDS = ("slow", "fail", "surge", "kill", "quiet")
SIZES = (4, 5, 6, 8, 10, 12, 16, 20, 24)
# CPU budget at quiet load, in HTTP operations per second (a request served, a call made):
# a traced Python agent process handles a few dozen a second on a shared core
PROCESS_OPS_PER_S = 25.0
FLEET_OPS_PER_S = 120.0


@dataclass
class RunPlan:
    """One run of the corpus: the fleet, its trigger (none for a quiet run), how long."""

    name: str
    split: str
    seed: int
    kind: str
    spec: FleetSpec
    triggers: list[Trigger] = field(default_factory=list)
    duration_s: float = 300.0

    def config_key(self) -> str:
        """Hash of the fleet's configuration without seed or tenant: two runs with the same
        key ran the same fleet shape under the same policies and load."""
        d = self.spec.to_dict()
        for k in ("seed", "tenant", "otlp_endpoint"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"name": self.name, "split": self.split, "seed": self.seed, "kind": self.kind,
                "duration_s": self.duration_s, "config_key": self.config_key(),
                "triggers": [t.to_dict() for t in self.triggers], "fleet": self.spec.to_dict()}


def visits(spec: FleetSpec) -> dict[str, float]:
    """Expected requests each agent serves per entry request (entries chosen uniformly;
    every agent calls each of its callees once per request it serves)."""
    calls = {a.name: a.calls for a in spec.agents}
    memo: dict[str, dict[str, float]] = {}

    def below(a: str) -> dict[str, float]:
        if a not in memo:
            out = {a: 1.0}
            for c in calls[a]:
                for k, v in below(c).items():
                    out[k] = out.get(k, 0.0) + v
            memo[a] = out
        return memo[a]

    total: dict[str, float] = {a.name: 0.0 for a in spec.agents}
    for e in spec.entries:
        for k, v in below(e).items():
            total[k] += v / len(spec.entries)
    return total


def coverage(spec: FleetSpec) -> dict[str, float]:
    """Fraction of entry requests whose call tree reaches each agent."""
    calls = {a.name: a.calls for a in spec.agents}

    def reach(a: str, seen: set[str]) -> set[str]:
        seen.add(a)
        for c in calls[a]:
            if c not in seen:
                reach(c, seen)
        return seen

    cov = {a.name: 0.0 for a in spec.agents}
    for e in spec.entries:
        for a in reach(e, set()):
            cov[a] += 1.0 / len(spec.entries)
    return cov


def holding(spec: FleetSpec) -> dict[str, float]:
    """Seconds a request holds one of an agent's workers when nothing queues: its own
    service time, then its callees in parallel (the slowest of k draws runs long: the
    callees' holding time is stretched by 1 + log2(k) / 2)."""
    calls = {a.name: a.calls for a in spec.agents}
    mean = {a.name: a.service_time.mean_s for a in spec.agents}
    memo: dict[str, float] = {}

    def r(a: str) -> float:
        if a not in memo:
            k = len(calls[a])
            memo[a] = mean[a] + (max(r(c) for c in calls[a]) * (1 + math.log2(k) / 2) if k else 0.0)
        return memo[a]

    return {a: r(a) for a in calls}


def tail(st: ServiceTime) -> float:
    """The service time's 99.9th percentile over its mean."""
    if st.kind == "lognormal":
        return math.exp(3.09 * st.sigma - st.sigma ** 2 / 2)
    return 6.9 if st.kind == "exponential" else 1.0


def utilisation(spec: FleetSpec, rate: float) -> dict[str, float]:
    """Offered load over pool capacity per agent (holding times, no retries)."""
    v, h = visits(spec), holding(spec)
    return {a.name: rate * v[a.name] * h[a.name] / (a.workers * a.replicas) for a in spec.agents}


def rate_budget(spec: FleetSpec) -> float:
    """The highest entry rate (requests/s, at most 40) within the CPU budget: per process
    and for the whole fleet, counting each request an agent serves and each call it makes."""
    v = visits(spec)
    ops = {a.name: v[a.name] * (1 + len(a.calls)) for a in spec.agents}
    per_process = max(ops[a.name] / a.replicas for a in spec.agents)
    return min(40.0, PROCESS_OPS_PER_S / per_process, FLEET_OPS_PER_S / sum(ops.values()))


def _fleet(rng: random.Random, seed: int, tenant: str) -> FleetSpec:
    """The fleet's shape and policies; pools are sized later, from the load."""
    n = rng.choice(SIZES)
    topology = rng.choice(("chain", "fan_out", "fan_in", "diamond", "layered", "layered"))
    if topology == "chain":
        n = min(n, 6)  # per-hop timeouts nest: a long chain times out on its own
    fanout = rng.choice((1, 2, 3)) if topology == "layered" else 1
    names = [f"agent-{i}" for i in range(n)]
    calls, entries = wire(topology, names, seed, fanout)
    kind = rng.choice(("lognormal", "lognormal", "exponential", "constant"))
    timeout = round(rng.uniform(0.5, 2.0), 2)
    retry = RetryPolicy(max_attempts=rng.choice((1, 2, 3, 3, 4)), backoff_s=round(rng.uniform(0.02, 0.2), 3),
                        multiplier=2.0, jitter=0.5)
    agents = []
    for name in names:
        st = ServiceTime(kind, round(rng.uniform(0.04, 0.2), 4), round(rng.uniform(0.3, 1.0), 2))
        agents.append(AgentConfig(name, calls[name], 1, 1, 1, st, timeout, retry,
                                  "degrade" if rng.random() < 0.15 else "fail"))
    return FleetSpec(agents=agents, entries=entries, topology=topology, tenant=tenant, seed=seed,
                     entry_timeout_s=round(max(3.0, 2 * timeout * retry.max_attempts), 1))


def _size_pools(rng: random.Random, spec: FleetSpec, busy: dict[str, float]) -> None:
    """Workers per replica so that each agent runs at its drawn utilisation at the fleet's
    rate (``busy``: agent -> utilisation; others 15-45 %), queues 1-3 pools deep."""
    v = visits(spec)
    for a in reversed(spec.agents):  # callees before callers (wire() names them in call order)
        h = holding(spec)
        u = busy.get(a.name) or rng.uniform(0.15, 0.45)
        a.workers = max(1, math.ceil(spec.rate * v[a.name] * h[a.name] / (u * a.replicas)))
        a.queue = max(2, a.workers * rng.choice((1, 2, 3)))
        if a.name in busy:  # whole workers round the utilisation down: its own service time makes it up
            extra = u * a.workers * a.replicas / (spec.rate * v[a.name]) - h[a.name]
            a.service_time.mean_s = round(a.service_time.mean_s + max(0.0, extra), 4)
    h = holding(spec)
    for a in spec.agents:  # a timeout normal calls do not hit: past the slowest callee's p99.9
        if a.calls:
            a.timeout_s = round(max(a.timeout_s, 1.5 * max(h[c] * tail(spec.agent(c).service_time)
                                                           for c in a.calls)), 2)
    entry = max(h[e] for e in spec.entries)
    spec.entry_timeout_s = round(max(spec.entry_timeout_s, 4 * entry), 1)


def _target(rng: random.Random, spec: FleetSpec) -> str:
    """A dependency most entry requests need, below the entries where there is one."""
    cov = coverage(spec)
    inner = [a.name for a in spec.agents if a.name not in spec.entries] or [a.name for a in spec.agents]
    best = max(cov[a] for a in inner)
    return rng.choice([a for a in inner if cov[a] >= 0.9 * best])


def draw_run(seed: int, split: str, kind: str | None = None) -> RunPlan:
    """One run of the family: ``kind`` one of ``KINDS`` (None: drawn from the seed)."""
    rng = random.Random(f"aura-testbed-family/{seed}")
    kind = kind or rng.choice(KINDS[:-1])
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name = f"{split[:3]}-{seed}-{kind}"
    spec = _fleet(rng, seed, tenant=name)
    trig: list[Trigger] = []
    target = _target(rng, spec)
    if kind == "kill":  # the victim runs several replicas, and loses all but one
        a = spec.agent(target)
        a.replicas = rng.choice((2, 3))
        a.on_failure = "fail"
    budget = rate_budget(spec)
    # a surge multiplies the load: start lower, so that the surged fleet still fits the CPU
    share = rng.uniform(0.3, 0.4) if kind == "surge" else rng.uniform(0.5, 1.0)
    spec.rate = round(max(0.5, budget * share), 2)
    busy = {}
    if kind == "kill":  # losing replicas overloads the victim
        busy[target] = rng.uniform(0.55, 0.7)
    elif kind == "surge":  # the surge overloads the busiest agent
        busy[target] = rng.uniform(0.45, 0.6)
    _size_pools(rng, spec, busy)
    lead = round(rng.uniform(90.0, 150.0))
    ramp = round(rng.uniform(40.0, 120.0))
    if kind == "slow":
        a = spec.agent(target)
        a.on_failure = "fail"
        # the pool saturates part-way through the ramp (utilisation x factor > 1), and at
        # full strength the service time alone comes near the client timeout
        u = utilisation(spec, spec.rate)[target]
        factor = max(rng.uniform(1.5, 3.0) / u, 0.8 * a.timeout_s / a.service_time.mean_s)
        factor = min(factor, 3.0 / u)
        trig = [Trigger("slow", lead, agent=target, factor=round(factor, 1), ramp_s=ramp)]
    elif kind == "fail":
        trig = [Trigger("fail", lead, agent=target, p=round(rng.uniform(0.95, 1.0), 3), ramp_s=ramp)]
    elif kind == "surge":
        u_max = max(utilisation(spec, spec.rate).values())
        factor = min(3.5, rng.uniform(1.8, 2.5) / u_max)  # at most 3.5x: the CPU is shared
        trig = [Trigger("surge", lead, factor=round(factor, 2), ramp_s=ramp)]
    elif kind == "kill":
        a = spec.agent(target)
        trig = [Trigger("kill", lead, agent=target, count=a.replicas - 1, ramp_s=ramp / 2)]
    duration = 720.0 if kind == "quiet" else float(lead + ramp + 90)
    spec.validate()
    for t in trig:
        t.validate(spec, duration)
    return RunPlan(name, split, seed, kind, spec, trig, duration)
