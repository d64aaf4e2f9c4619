"""Where to act: rank a window's agents by urgency from its metrics and weighted call graph.

Plain functions over a ``WindowSnapshot`` (no simulator knowledge). Per agent, in [0, 1]:

- *health*: how close it is to failing as it reports itself - error rate, and p99 on a log
  scale from the fleet's median p99 (0) to the timeout (1). An agent that only appears as a
  call destination (uninstrumented, e.g. a database) is judged as its callers see it: the
  error share and latency of the calls into it.
- *own stress*: what the agent itself adds - self time (p50 minus the time it waits on its
  callees, log scale from the fleet's median self time to the timeout), saturation (queue
  wait vs the timeout, CPU above ``cpu_knee``) and errors its failed outgoing calls do not
  explain. The stressed component is where own stress is high.
- *blast radius*: the share of the window's external requests (requests an agent serves
  beyond the calls it receives) that transitively reach the agent, calls per request
  propagated upstream and capped at 1.
- *exposure*: own stress carried up the call graph, each caller taking the share of its
  latency it spends waiting on the callee: the callers in the blast radius of a stressed
  component inherit its urgency in proportion to how much they wait on it.
- *epicentre* (topology): the stress filtration (``StressFiltration``: links enter by
  decreasing stress) read through its H0 merge tree - 1 minus the filtration value at which
  the agent joins the component born from the most stressed link. Agents tied to the
  epicentre by stressed links score high; the gap to the healthy bulk is the persistence of
  that component's H0 bar.

Urgency = max(health, own x (1 + blast / 2), 0.8 x exposure) [+ 0.25 x epicentre]: the
stressed component first, ahead of its callers, which follow by how much they depend on it.
The weights were chosen on simulated seeds 100-147 (``bench/bench_localisation.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pipelines.topology.filtrations import StressFiltration
from pipelines.windowing import WindowSnapshot
from schemas.arrow import METRICS

BLAST_GAIN = 0.5  # own stress x (1 + BLAST_GAIN x blast radius)
EXPOSURE_WEIGHT = 0.8  # a caller ranks below the component it waits on
TOPOLOGY_WEIGHT = 0.25
MAX_DEPTH = 32  # propagation rounds (call graphs are shallow; cycles converge or stop here)


@dataclass(frozen=True)
class Target:
    """One agent to act on: its urgency, own stress, blast radius and callers (most calls first)."""

    agent: str
    score: float
    stress: float
    blast: float
    callers: tuple[str, ...]


@dataclass(frozen=True)
class _Graph:
    """The window's call edges with traffic (self-calls dropped) and per-agent totals."""

    src: np.ndarray
    dst: np.ndarray
    count: np.ndarray
    errors: np.ndarray
    latency: np.ndarray
    req: np.ndarray  # requests each agent served in the window

    @staticmethod
    def of(snap: WindowSnapshot) -> _Graph:
        used = (snap.edge_count > 0) & (snap.edge_src != snap.edge_dst)
        return _Graph(snap.edge_src[used].astype(np.int64), snap.edge_dst[used].astype(np.int64),
                      snap.edge_count[used].astype(float), snap.edge_errors[used].astype(float),
                      np.nan_to_num(snap.edge_latency_ms[used]), _metric(snap, "request_count"))

    @staticmethod
    def per_agent(n: int, by: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Sum of per-edge ``weights`` per agent (``by``: the edges' src or dst)."""
        return np.bincount(by, weights, minlength=n)

    def matrix(self, n: int, values: np.ndarray) -> sp.csr_matrix:
        """(caller, callee) matrix of per-edge values, capped at 1."""
        m = sp.csr_matrix((values, (self.src, self.dst)), shape=(n, n))
        m.data = np.minimum(m.data, 1.0)
        return m


def _metric(snap: WindowSnapshot, name: str) -> np.ndarray:
    return np.nan_to_num(snap.metrics[:, METRICS.index(name)], nan=0.0)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)


def _log_scale(x: np.ndarray, ref: float, top: float) -> np.ndarray:
    """0 at ``ref`` or below, 1 at ``top`` or above, log-linear between."""
    if ref >= top:
        return (x >= top).astype(float)
    return np.clip(np.log(np.maximum(x, 1e-9) / ref) / np.log(top / ref), 0.0, 1.0)


def _median(x: np.ndarray, mask: np.ndarray, floor: float) -> float:
    return max(float(np.median(x[mask])), floor) if mask.any() else floor


def health(snap: WindowSnapshot, timeout_ms: float = 1000.0) -> np.ndarray:
    """Per agent: max(error rate, p99 from the fleet median to the timeout, log scale);
    agents that do not report are judged by the calls into them."""
    g, n = _Graph.of(snap), len(snap.agents)
    serving = snap.n_samples > 0
    p99 = _metric(snap, "latency_p99_ms")
    out = np.maximum(_metric(snap, "error_rate"), _log_scale(p99, _median(p99, serving, 1.0), timeout_ms))
    calls_in = g.per_agent(n, g.dst, g.count)
    seen = np.maximum(_ratio(g.per_agent(n, g.dst, g.errors), calls_in),
                      _log_scale(_ratio(g.per_agent(n, g.dst, g.count * g.latency), calls_in),
                                 _median(p99, serving, 1.0), timeout_ms))
    return np.where(serving, out, seen)


def own_stress(snap: WindowSnapshot, timeout_ms: float = 1000.0, cpu_knee: float = 0.8) -> np.ndarray:
    """Per agent: max(self-time inflation, queue wait vs timeout, CPU above the knee,
    errors not explained by its failed outgoing calls)."""
    g, n = _Graph.of(snap), len(snap.agents)
    serving = snap.n_samples > 0
    wait = _ratio(g.per_agent(n, g.src, g.count * g.latency), g.req)  # ms per request on callees
    self_ms = np.maximum(_metric(snap, "latency_p50_ms") - wait, 0.0)
    inflation = _log_scale(self_ms, _median(self_ms, serving, 0.1), timeout_ms)
    rate = g.req / max(snap.window_end - snap.window_start, 1e-9)
    queue = _metric(snap, "queue_depth")
    queue_s = np.where(rate > 0, _ratio(queue, rate), np.where(queue > 0, np.inf, 0.0))
    saturation = np.maximum(np.clip(queue_s * 1000.0 / timeout_ms, 0.0, 1.0),
                            np.clip((_metric(snap, "cpu") - cpu_knee) / (1.0 - cpu_knee), 0.0, 1.0))
    out_fail = _ratio(g.per_agent(n, g.src, g.errors), g.per_agent(n, g.src, g.count))
    errors = np.clip(_metric(snap, "error_rate") - out_fail, 0.0, 1.0)
    return np.where(serving, np.maximum.reduce([inflation, saturation, errors]), 0.0)


def blast_radius(snap: WindowSnapshot) -> np.ndarray:
    """Per agent: share of the window's external requests that transitively reach it."""
    g, n = _Graph.of(snap), len(snap.agents)
    external = np.maximum(g.req - g.per_agent(n, g.dst, g.count), 0.0)
    total = external.sum()
    if total <= 0:
        return np.zeros(n)
    down = g.matrix(n, _ratio(g.count, g.req[g.src])).T.tocsr()  # calls per request, callee rows
    reach = np.zeros(n)
    for _ in range(MAX_DEPTH):
        nxt = np.minimum(down @ (external + reach), total)
        if np.allclose(nxt, reach):
            break
        reach = nxt
    return reach / total


def exposure(snap: WindowSnapshot, own: np.ndarray) -> np.ndarray:
    """``own`` carried upstream: x = max(own, W x), W = share of each caller's p50 spent
    waiting on each callee."""
    g, n = _Graph.of(snap), len(snap.agents)
    p50 = _metric(snap, "latency_p50_ms")
    w = g.matrix(n, _ratio(g.count * g.latency, g.req[g.src] * p50[g.src]))
    x = own.copy()
    for _ in range(MAX_DEPTH):
        nxt = np.minimum(np.maximum(own, w @ x), 1.0)
        if np.array_equal(nxt, x):
            break
        x = nxt
    return x


def epicentre(snap: WindowSnapshot, timeout_ms: float = 1000.0) -> np.ndarray:
    """Per agent: 1 - the stress-filtration value at which it joins the component born
    from the most stressed link (minimax path value in the H0 merge tree); 0 if never."""
    n = len(snap.agents)
    u, v, value = StressFiltration(timeout_ms=timeout_ms).edge_values(snap)
    level = np.full(n, np.inf)
    if len(value):
        first = int(np.argmin(value))
        level[[u[first], v[first]]] = value[first]
        for _ in range(n):
            old = level.copy()
            np.minimum.at(level, v, np.maximum(level[u], value))
            np.minimum.at(level, u, np.maximum(level[v], value))
            if np.array_equal(old, level):
                break
    return np.where(np.isfinite(level), 1.0 - level, 0.0)


def callers_of(snap: WindowSnapshot) -> list[tuple[str, ...]]:
    """Per agent, the agents calling into it in the window, most calls first."""
    g = _Graph.of(snap)
    order = np.lexsort((g.src, -g.count, g.dst))
    out: list[list[str]] = [[] for _ in snap.agents]
    for s, d in zip(g.src[order].tolist(), g.dst[order].tolist()):
        out[d].append(snap.agents[s])
    return [tuple(c) for c in out]


def _top(snap: WindowSnapshot, score: np.ndarray, stress: np.ndarray, blast: np.ndarray,
         k: int) -> list[Target]:
    order = np.lexsort((np.arange(len(score)), -score))[:max(k, 0)]
    callers = callers_of(snap)
    return [Target(snap.agents[i], float(score[i]), float(stress[i]), float(blast[i]), callers[i])
            for i in order.tolist()]


def rank_targets(snap: WindowSnapshot, k: int = 10, use_topology: bool = True,
                 timeout_ms: float = 1000.0) -> list[Target]:
    """The ``k`` most urgent agents, most urgent first (module docstring: the score);
    ``use_topology=False`` drops the stress-filtration term (the ablation)."""
    if not snap.agents:
        return []
    own = own_stress(snap, timeout_ms)
    blast = blast_radius(snap)
    seen = health(snap, timeout_ms)
    score = np.maximum.reduce([seen, own * (1.0 + BLAST_GAIN * blast),
                               EXPOSURE_WEIGHT * exposure(snap, own)])
    if use_topology:
        score = score + TOPOLOGY_WEIGHT * epicentre(snap, timeout_ms)
    return _top(snap, score, np.maximum(seen, own), blast, k)


def rank_baseline(snap: WindowSnapshot, k: int = 10, timeout_ms: float = 1000.0) -> list[Target]:
    """By the agent's own error rate and p99 alone: max(error rate, p99 / timeout)."""
    score = np.maximum(_metric(snap, "error_rate"), _metric(snap, "latency_p99_ms") / timeout_ms)
    return _top(snap, score, score, np.zeros(len(score)), k)


def entry_agents(snap: WindowSnapshot) -> list[str]:
    """Agents that serve requests but receive no calls from other agents in the window:
    where external load enters (where to shed it)."""
    g = _Graph.of(snap)
    called = np.zeros(len(snap.agents), dtype=bool)
    called[g.dst] = True
    return [a for a, c, r in zip(snap.agents, called, g.req > 0) if r and not c]


def services_ranked(targets: list[Target], service_of: Callable[[str], object]) -> list:
    """The targets' services in rank order, each once (at its best-ranked agent)."""
    return list(dict.fromkeys(service_of(t.agent) for t in targets))


def recall_at(ranked: list, truth: set, k: int) -> float:
    """|top-k of ``ranked`` ∩ truth| / min(|truth|, k): 1 when the top k hold as much of the
    truth as k places can (nan for an empty truth)."""
    if not truth:
        return float("nan")
    return len(set(ranked[:k]) & set(truth)) / min(len(truth), k)


def precision_at(ranked: list, truth: set, k: int) -> float:
    """|top-k ∩ truth| / k: the share of the k places spent on true items (a ranking with
    fewer than k items is charged for the empty places)."""
    return len(set(ranked[:k]) & set(truth)) / k if k > 0 else float("nan")


def first_failed(sick: np.ndarray, group: np.ndarray, window: int = 5, persist: int = 1) -> set:
    """Groups (e.g. services) that failed first: ``sick`` is (ticks, agents) health
    (True = unhealthy), ``group`` maps agent -> group. An agent *fails* at the first tick
    of a run of ``persist`` unhealthy ticks; the answer is the groups of the agents that
    fail within ``window`` ticks of the first failure (empty if none fails)."""
    sick = np.asarray(sick, dtype=bool)
    persist = max(int(persist), 1)
    t = len(sick) - persist + 1
    if t <= 0:
        return set()
    held = np.logical_and.reduce([sick[j:j + t] for j in range(persist)])
    hit = np.flatnonzero(held.any(axis=1))
    if len(hit) == 0:
        return set()
    k = int(hit[0])
    return set(np.asarray(group)[held[k:k + max(window, 1)].any(axis=0)].tolist())
