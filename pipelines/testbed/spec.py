"""What a testbed fleet is: agents, their wiring, their latency model and their client
policies (``FleetSpec``), and the triggers a run injects (``Trigger``).

Everything here is plain data that round-trips through JSON, so a fleet is reproducible
from its ``fleet.json`` and a seed.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field, fields

TOPOLOGIES = ("chain", "fan_out", "fan_in", "diamond", "layered")
DISTRIBUTIONS = ("lognormal", "exponential", "constant")
ON_FAILURE = ("fail", "degrade")
TRIGGER_KINDS = ("slow", "surge", "kill", "fail")
# The simulator's mechanism names where one matches, so backtests group them alike.
MECHANISM = {"slow": "timeout_propagation", "surge": "retry_storm", "kill": "load_redistribution",
             "fail": "error_propagation"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SpecError(ValueError):
    """A fleet spec or trigger that cannot be run, with the field that is wrong."""


@dataclass
class ServiceTime:
    """The latency model standing in for the agent's model call (seconds)."""

    kind: str = "lognormal"  # lognormal | exponential | constant
    mean_s: float = 0.03
    sigma: float = 0.5  # lognormal shape; ignored otherwise

    def sample(self, rng: random.Random) -> float:
        if self.kind == "constant":
            return self.mean_s
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.mean_s)
        mu = math.log(self.mean_s) - self.sigma ** 2 / 2  # so that the mean is mean_s
        return rng.lognormvariate(mu, self.sigma)


@dataclass
class RetryPolicy:
    """Client retries on a timeout, a connection error or a 5xx answer."""

    max_attempts: int = 3
    backoff_s: float = 0.05  # before the second attempt; multiplied after each further one
    multiplier: float = 2.0
    jitter: float = 0.5  # the backoff is scaled by a uniform factor in [1 - jitter, 1 + jitter]

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = self.backoff_s * self.multiplier ** (attempt - 1)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0)))


@dataclass
class AgentConfig:
    """One agent (a service of ``replicas`` identical processes) and whom it calls."""

    name: str
    calls: list[str] = field(default_factory=list)
    workers: int = 8
    queue: int = 16
    replicas: int = 1
    service_time: ServiceTime = field(default_factory=ServiceTime)
    timeout_s: float = 1.0  # per downstream attempt, whole request
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_failure: str = "fail"  # a failed downstream call fails the request, or degrades it

    @classmethod
    def from_dict(cls, d: dict) -> AgentConfig:
        d = dict(d)
        d["service_time"] = ServiceTime(**d.get("service_time", {}))
        d["retry"] = RetryPolicy(**d.get("retry", {}))
        return cls(**_known(cls, d, f"agent {d.get('name')!r}"))


@dataclass
class FleetSpec:
    """A fleet of agents on loopback and the load it runs under."""

    agents: list[AgentConfig]
    entries: list[str]
    topology: str = "custom"
    tenant: str = "testbed"
    rate: float = 20.0  # open-loop Poisson arrivals over the entry agents, requests/s
    entry_timeout_s: float = 3.0  # the load generator's own client timeout
    max_outstanding: int = 1000  # load generator bound; arrivals beyond it are shed (counted)
    seed: int = 0
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    export_delay_ms: int = 500  # BatchSpanProcessor schedule delay
    onset_threshold: float = 0.5  # entry failure fraction that counts as broken
    onset_sustain_s: int = 3  # ... for this many consecutive seconds

    @classmethod
    def build(cls, n_agents: int = 8, topology: str = "layered", *, fanout: int = 1, workers: int = 8,
              queue: int = 16, replicas: int = 1, timeout_s: float = 1.0, retry: RetryPolicy | None = None,
              service_time: ServiceTime | None = None, on_failure: str = "fail", seed: int = 0,
              **kw) -> FleetSpec:
        """A fleet of ``n_agents`` named ``agent-0`` ... wired by a named topology
        (``fanout``: calls per agent in a layered one), every agent alike; further
        ``FleetSpec`` fields as keywords."""
        names = [f"agent-{i}" for i in range(n_agents)]
        calls, entries = wire(topology, names, seed, fanout)
        agents = [AgentConfig(n, calls[n], workers, queue, replicas, service_time or ServiceTime(),
                              timeout_s, retry or RetryPolicy(), on_failure) for n in names]
        spec = cls(agents=agents, entries=entries, topology=topology, seed=seed, **kw)
        spec.validate()
        return spec

    def agent(self, name: str) -> AgentConfig:
        for a in self.agents:
            if a.name == name:
                return a
        raise SpecError(f"no agent {name!r}; agents: {[a.name for a in self.agents]}")

    def edges(self) -> list[tuple[str, str]]:
        """Caller -> callee pairs, in agent order."""
        return [(a.name, c) for a in self.agents for c in a.calls]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FleetSpec:
        d = dict(d)
        d["agents"] = [AgentConfig.from_dict(a) for a in d.get("agents", [])]
        spec = cls(**_known(cls, d, "fleet spec"))
        spec.validate()
        return spec

    def validate(self) -> None:
        """``SpecError`` naming the first thing that cannot run."""
        names = [a.name for a in self.agents]
        if not names:
            raise SpecError("agents: a fleet needs at least one agent")
        if len(set(names)) != len(names):
            raise SpecError(f"agents: duplicate names in {names}")
        if not _NAME.match(self.tenant):
            raise SpecError(f"tenant: {self.tenant!r} does not match {_NAME.pattern}")
        for a in self.agents:
            where = f"agent {a.name!r}"
            if not _NAME.match(a.name):
                raise SpecError(f"{where}: name does not match {_NAME.pattern}")
            unknown = [c for c in a.calls if c not in names]
            if unknown or a.name in a.calls or len(set(a.calls)) != len(a.calls):
                raise SpecError(f"{where}: calls {a.calls} must be distinct other agents of the fleet")
            if a.workers < 1 or a.queue < 0 or a.replicas < 1:
                raise SpecError(f"{where}: need workers >= 1, queue >= 0, replicas >= 1")
            if a.timeout_s <= 0 or a.retry.max_attempts < 1 or a.retry.backoff_s < 0:
                raise SpecError(f"{where}: need timeout_s > 0, retry.max_attempts >= 1, backoff_s >= 0")
            if a.service_time.kind not in DISTRIBUTIONS or a.service_time.mean_s <= 0:
                raise SpecError(f"{where}: service_time needs kind in {DISTRIBUTIONS} and mean_s > 0")
            if a.on_failure not in ON_FAILURE:
                raise SpecError(f"{where}: on_failure must be one of {ON_FAILURE}")
        if not self.entries or any(e not in names for e in self.entries):
            raise SpecError(f"entries: {self.entries} must be agents of the fleet")
        _check_acyclic({a.name: a.calls for a in self.agents})
        if self.rate <= 0 or self.entry_timeout_s <= 0 or self.max_outstanding < 1:
            raise SpecError("rate, entry_timeout_s and max_outstanding must be positive")
        if not 0 < self.onset_threshold < 1 or self.onset_sustain_s < 1:
            raise SpecError("need 0 < onset_threshold < 1 and onset_sustain_s >= 1")


@dataclass
class Ramp:
    """A value moving linearly from ``start`` to ``target`` over ``ramp_s`` seconds from
    ``t0`` (monotonic clock): a slow factor or a load multiplier."""

    start: float = 1.0
    target: float = 1.0
    t0: float = 0.0
    ramp_s: float = 0.0

    def value(self, now: float) -> float:
        if self.ramp_s <= 0:
            return self.target if now >= self.t0 else self.start
        return self.start + (self.target - self.start) * min(1.0, max(0.0, (now - self.t0) / self.ramp_s))

    def retarget(self, target: float, ramp_s: float, now: float) -> None:
        """Head for ``target`` from wherever the value is now."""
        self.start, self.target, self.t0, self.ramp_s = self.value(now), target, now, ramp_s


def _known(cls, d: dict, where: str) -> dict:
    names = {f.name for f in fields(cls)}
    extra = sorted(set(d) - names)
    if extra:
        raise SpecError(f"{where}: unknown fields {extra}")
    return d


def _check_acyclic(calls: dict[str, list[str]]) -> None:
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            raise SpecError(f"calls: cycle {' -> '.join([*path, n])}")
        state[n] = 1
        for c in calls[n]:
            visit(c, [*path, n])
        state[n] = 2

    for n in calls:
        visit(n, [])


def wire(topology: str, names: list[str], seed: int = 0,
         fanout: int = 1) -> tuple[dict[str, list[str]], list[str]]:
    """Who calls whom (agent -> callees) and the entry agents, for a named topology:

    - chain: 0 -> 1 -> ... -> n-1, entry 0
    - fan_out: 0 -> every other agent, entry 0
    - fan_in: every agent but the last -> the last, all of them entries
    - diamond: 0 -> {1 .. n-2} -> n-1 (a shared dependency), entry 0
    - layered: three layers (two when n < 5) of about equal size, the first the entries,
      each agent calling ``fanout`` random agents of the next layer, and every agent below
      the first called by at least one
    """
    n = len(names)
    calls: dict[str, list[str]] = {a: [] for a in names}
    need = {"chain": 1, "fan_out": 2, "fan_in": 2, "diamond": 3, "layered": 2}
    if topology not in need:
        raise SpecError(f"topology: {topology!r} is not one of {TOPOLOGIES}")
    if n < need[topology]:
        raise SpecError(f"topology {topology}: needs at least {need[topology]} agents, got {n}")
    if topology == "chain":
        for a, b in zip(names, names[1:]):
            calls[a].append(b)
        return calls, names[:1]
    if topology == "fan_out":
        calls[names[0]] = names[1:]
        return calls, names[:1]
    if topology == "fan_in":
        for a in names[:-1]:
            calls[a].append(names[-1])
        return calls, names[:-1]
    if topology == "diamond":
        calls[names[0]] = names[1:-1]
        for a in names[1:-1]:
            calls[a].append(names[-1])
        return calls, names[:1]
    rng = random.Random(seed)
    n_layers = 3 if n >= 5 else 2
    sizes = [n // n_layers + (1 if i < n % n_layers else 0) for i in range(n_layers)]
    layers, k = [], 0
    for size in sizes:
        layers.append(names[k:k + size])
        k += size
    for upper, lower in zip(layers, layers[1:]):
        callers = rng.sample(upper, len(upper))
        for i, b in enumerate(rng.sample(lower, len(lower))):  # every lower agent gets a caller
            calls[callers[i % len(callers)]].append(b)
        for a in upper:  # then each caller up to ``fanout`` callees
            spare = [b for b in lower if b not in calls[a]]
            calls[a] += rng.sample(spare, max(0, min(fanout - len(calls[a]), len(spare))))
            calls[a].sort(key=names.index)
    return calls, layers[0]


@dataclass
class ProcessSpec:
    """What one replica process needs: its agent, where it listens, whom it calls."""

    agent: AgentConfig
    replica: int
    tenant: str
    otlp_endpoint: str
    downstream: dict[str, list[str]]  # callee -> base URLs of its replicas
    port: int = 0
    fd: int | None = None  # an already bound, listening socket inherited from the parent
    export_delay_ms: int = 500
    seed: int = 0
    stats_path: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ProcessSpec:
        return cls(**{**d, "agent": AgentConfig.from_dict(d["agent"])})


@dataclass
class Trigger:
    """A change injected ``at_s`` seconds into a run.

    - slow: ``agent``'s service time x ``factor``, ramped linearly over ``ramp_s``
    - surge: the load generator's rate x ``factor``, ramped over ``ramp_s``
    - kill: SIGKILL ``count`` replicas of ``agent`` (restarted after ``for_s`` if given),
      one at a time spread over ``ramp_s`` when given
    - fail: ``agent`` fails a fraction ``p`` of its requests (HTTP 500), ramped over ``ramp_s``

    With ``for_s`` the change is undone that many seconds after ``at_s``.
    """

    kind: str
    at_s: float
    agent: str | None = None
    factor: float = 1.0
    ramp_s: float = 0.0
    p: float = 0.0
    count: int = 1
    for_s: float | None = None

    @property
    def mechanism(self) -> str:
        return MECHANISM[self.kind]

    @classmethod
    def parse(cls, text: str) -> Trigger:
        """``KIND@SECONDS[:key=value,...]``, e.g. ``slow@20:agent=agent-5,factor=20,ramp=5``
        (keys: agent, factor, ramp, p, count, for)."""
        m = re.fullmatch(r"(\w+)@([0-9.]+)(?::(.*))?", text.strip())
        if not m:
            raise SpecError(f"trigger {text!r}: expected KIND@SECONDS[:key=value,...]")
        kind, at, args = m.group(1), float(m.group(2)), m.group(3) or ""
        kw: dict = {}
        keys = {"agent": ("agent", str), "factor": ("factor", float), "ramp": ("ramp_s", float),
                "p": ("p", float), "count": ("count", int), "for": ("for_s", float)}
        for part in filter(None, args.split(",")):
            k, sep, v = part.partition("=")
            if not sep or k.strip() not in keys:
                raise SpecError(f"trigger {text!r}: bad argument {part!r}; keys: {sorted(keys)}")
            name, conv = keys[k.strip()]
            try:
                kw[name] = conv(v.strip())
            except ValueError:
                raise SpecError(f"trigger {text!r}: {k} = {v!r} is not a {conv.__name__}") from None
        return cls(kind=kind, at_s=at, **kw)

    def validate(self, spec: FleetSpec, duration_s: float) -> None:
        where = f"trigger {self.kind}@{self.at_s:g}"
        if self.kind not in TRIGGER_KINDS:
            raise SpecError(f"{where}: kind must be one of {TRIGGER_KINDS}")
        if not 0 <= self.at_s < duration_s:
            raise SpecError(f"{where}: must fall inside the run (0 .. {duration_s:g} s)")
        if self.kind != "surge":
            if self.agent is None:
                raise SpecError(f"{where}: needs agent=NAME")
            spec.agent(self.agent)
        if self.kind in ("slow", "surge") and self.factor <= 0:
            raise SpecError(f"{where}: factor must be positive")
        if self.kind == "fail" and not 0 < self.p <= 1:
            raise SpecError(f"{where}: needs 0 < p <= 1")
        if self.kind == "kill" and not 1 <= self.count <= spec.agent(self.agent).replicas:
            raise SpecError(f"{where}: count must be 1 .. replicas of {self.agent}")
        if self.ramp_s < 0 or (self.for_s is not None and self.for_s <= 0):
            raise SpecError(f"{where}: ramp must be >= 0 and for > 0")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}
