"""Service call graphs for the simulator: layered service graphs and scale-free graphs.

A fleet is a set of *services* (groups of interchangeable replicas) and a DAG of calls
between services. Agents are the replicas; a caller spreads its calls over the healthy
replicas of the callee service, and load shifts to the surviving peers when a replica
fails. ``fanout[a, b]`` is the number of calls service ``a`` makes to ``b`` per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve_triangular


@dataclass(frozen=True)
class ServiceGraph:
    """A DAG of services with per-edge fan-out and external load on entry services."""

    fanout: sp.csr_matrix  # (S, S): calls per request from row service to column service
    external: np.ndarray  # (S,): external requests/s arriving at each service
    family: str

    @property
    def n_services(self) -> int:
        return self.fanout.shape[0]

    def steady_load(self) -> np.ndarray:
        """Requests/s each service receives in steady state: lam = ext + F^T lam."""
        order = topological_order(self.fanout)
        perm = sp.csr_matrix(
            (np.ones(len(order)), (np.arange(len(order)), order)), shape=self.fanout.shape
        )
        # In topological order F^T is strictly lower triangular, so I - F^T is solvable by
        # forward substitution.
        ft = (perm @ self.fanout.T @ perm.T).tocsr()
        a = (sp.identity(len(order), format="csr") - ft).tocsr()
        lam_perm = spsolve_triangular(a, perm @ self.external, lower=True)
        return perm.T @ lam_perm


def topological_order(fanout: sp.spmatrix) -> np.ndarray:
    """Services in call order (callers before callees); raises if the graph has a cycle."""
    g = nx.DiGraph()
    g.add_nodes_from(range(fanout.shape[0]))
    coo = fanout.tocoo()
    g.add_edges_from(zip(coo.row.tolist(), coo.col.tolist()))
    return np.asarray(list(nx.topological_sort(g)), dtype=np.int64)


def layered_graph(
    n_services: int, rng: np.random.Generator, layers: int = 4, calls_per_service: int = 2
) -> ServiceGraph:
    """Layered service graph: entry layer -> ... -> storage layer, each service calling
    ``calls_per_service`` random services of the next layer (fan-out)."""
    if n_services < layers:
        raise ValueError(f"need at least {layers} services for {layers} layers")
    # Fewer services near the edge, more in the middle layers.
    weights = np.array([1.0 + min(i, layers - 1 - i) for i in range(layers)])
    sizes = np.maximum(1, np.floor(n_services * weights / weights.sum())).astype(int)
    sizes[int(np.argmax(weights))] += n_services - sizes.sum()
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rows, cols, vals = [], [], []
    for k in range(layers - 1):
        nxt = np.arange(bounds[k + 1], bounds[k + 2])
        for s in range(bounds[k], bounds[k + 1]):
            callees = rng.choice(nxt, size=min(calls_per_service, len(nxt)), replace=False)
            rows += [s] * len(callees)
            cols += callees.tolist()
            vals += rng.uniform(0.5, 1.0, size=len(callees)).tolist()
        # Every service of the next layer has at least one caller.
        called = set(cols)
        for t in nxt:
            if t not in called:
                rows.append(int(rng.integers(bounds[k], bounds[k + 1])))
                cols.append(int(t))
                vals.append(float(rng.uniform(0.5, 1.0)))
    fanout = sp.csr_matrix((vals, (rows, cols)), shape=(n_services, n_services))
    external = np.zeros(n_services)
    external[: sizes[0]] = rng.uniform(500.0, 1500.0, size=sizes[0])
    return ServiceGraph(fanout=fanout, external=external, family="layered")


def scale_free_graph(n_services: int, rng: np.random.Generator, m: int = 2) -> ServiceGraph:
    """Barabasi-Albert graph (networkx) oriented new -> old: hubs become shared deep
    dependencies; services nobody calls are the entry points."""
    if n_services <= m:
        raise ValueError(f"need more than m={m} services")
    g = nx.barabasi_albert_graph(n_services, m, seed=int(rng.integers(2**31)))
    edges = np.array([(max(u, v), min(u, v)) for u, v in g.edges()], dtype=np.int64)
    vals = rng.uniform(0.2, 0.6, size=len(edges))
    fanout = sp.csr_matrix((vals, (edges[:, 0], edges[:, 1])), shape=(n_services, n_services))
    has_caller = np.zeros(n_services, dtype=bool)
    has_caller[edges[:, 1]] = True
    external = np.where(has_caller, 0.0, rng.uniform(200.0, 600.0, size=n_services))
    return ServiceGraph(fanout=fanout, external=external, family="scale_free")


def build_graph(family: str, n_services: int, rng: np.random.Generator) -> ServiceGraph:
    """Build a service graph of the named family."""
    if family == "layered":
        return layered_graph(n_services, rng)
    if family == "scale_free":
        return scale_free_graph(n_services, rng)
    raise ValueError(f"unknown graph family {family!r}; use 'layered' or 'scale_free'")


def assign_replicas(load: np.ndarray, n_agents: int) -> np.ndarray:
    """Replica count per service, proportional to steady load, at least 1, summing to
    ``n_agents`` (like an autoscaler sized for the steady state)."""
    s = len(load)
    if n_agents < s:
        raise ValueError(f"{n_agents} agents cannot cover {s} services")
    share = load / load.sum() * n_agents
    reps = np.maximum(1, np.floor(share)).astype(np.int64)
    short = n_agents - reps.sum()
    if short > 0:
        reps[np.argsort(-(share - np.floor(share)))[:short]] += 1
    while reps.sum() > n_agents:  # the max(1, .) floor overshot: take from the biggest
        reps[int(np.argmax(reps))] -= 1
    return reps
