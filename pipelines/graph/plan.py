"""A snapshot's agent and CALLS writes as column-shaped steps, straight from its arrays:
values in numpy, change detection by ``delta.KeyTable``, and Python objects built only
for the rows written (a list per property, not a dict per row: packing per-row maps
dominated the client's time).

A step is ``(statement name, payload)``; a column payload is
``{"scalars": {...}, "columns": {name: list}}`` (JSON-safe: it goes to the spill file as
it is). Rows stay in the snapshot's order - agents sorted by id, edges by (caller, callee)
- which is the order the first window created them in: neighbouring rows share storage
pages, and a transaction rewrites fewer of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.graph import rows as R
from pipelines.graph.delta import Decision, KeyTable
from pipelines.windowing import WindowSnapshot
from schemas.arrow import METRICS

# what a spilled step becomes: MATCH-only statements are replayed as MERGE (the spill file
# may meet another graph); touches are dropped (the spill forgets the tenant's state, so
# the next window written rewrites every row, ``last_window`` included)
SPILLED = {"agents_update": "agents_merge", "calls_update": "calls_merge", "agents_touch": None,
           "calls_touch": None}


def splittable(step: str) -> bool:
    """Steps that only rewrite existing records: safe to run in concurrent lanes."""
    return step.endswith(("_update", "_touch"))


def agent_values(snap: WindowSnapshot, score: np.ndarray) -> np.ndarray:
    """(A, len(AGENT_PROPS)): metrics (non-finite: NaN), involvement (6 decimals), samples."""
    m = np.asarray(snap.metrics, np.float64).reshape(len(snap.agents), len(METRICS))
    m = np.where(np.isfinite(m), m, np.nan)
    return np.column_stack([m, np.round(np.asarray(score, np.float64), 6),
                            np.asarray(snap.n_samples, np.float64)])


def call_values(snap: WindowSnapshot) -> np.ndarray:
    """(E, 3): calls, errors, mean latency (non-finite: NaN)."""
    lat = np.asarray(snap.edge_latency_ms, np.float64)
    return np.column_stack([np.asarray(snap.edge_count, np.float64), np.asarray(snap.edge_errors, np.float64),
                            np.where(np.isfinite(lat), lat, np.nan)])


def _floats(x: np.ndarray) -> list:
    """Floats with NaN as None."""
    return [None if v != v else v for v in x.tolist()]


def column_steps(kind: str, d: Decision, build) -> list[tuple[str, dict]]:
    """The merge / update / touch steps of one row type that have rows."""
    out = []
    for how, mask in (("merge", d.merge), ("update", d.update), ("touch", d.touch)):
        idx = np.flatnonzero(mask)
        if len(idx):
            out.append((f"{kind}_{how}", build(idx, how == "touch")))
    return out


@dataclass
class SnapshotPlan:
    """The agent and CALLS steps of one snapshot, and what to remember once written."""

    steps: list[tuple[str, dict]]
    agents: tuple[np.ndarray, np.ndarray, Decision]  # slots, values, decision
    calls: tuple[np.ndarray, np.ndarray, Decision]
    window: int

    def count(self, what: str, part: str) -> int:
        d = (self.agents if what == "agents" else self.calls)[2]
        return int(getattr(d, part).sum())

    def remember(self, agents: KeyTable, calls: KeyTable) -> None:
        agents.remember(*self.agents[:2], self.window, self.agents[2])
        calls.remember(*self.calls[:2], self.window, self.calls[2])


def plan_snapshot(snap: WindowSnapshot, score: np.ndarray, agents: KeyTable, calls: KeyTable,
                  epsilon: float, refresh: int) -> SnapshotPlan:
    """Decide and build the agent and CALLS steps of a snapshot (module doc). Keys of one
    window are unique (a snapshot's agents and edges are)."""
    t, start = snap.tenant, R.ms(snap.window_start)
    length = R.ms(snap.window_end) - start
    a_slots = agents.slots(snap.agents, lambda names: [R.agent_key(t, a) for a in names])
    a_vals = agent_values(snap, score)
    a_dec = agents.decide(a_slots, a_vals, start, length, epsilon, refresh)
    src, dst = np.asarray(snap.edge_src, np.int64), np.asarray(snap.edge_dst, np.int64)
    codes = (a_slots[src] << 32) | a_slots[dst]
    c_slots = calls.slots(codes)
    c_vals = call_values(snap)
    c_dec = calls.decide(c_slots, c_vals, start, length, epsilon, refresh)
    akeys = agents.key_array()

    def agent_cols(idx: np.ndarray, touch: bool) -> dict:
        cols: dict = {"key": akeys[a_slots[idx]].tolist()}
        if not touch:
            v = a_vals[idx]
            for j, name in enumerate(METRICS):
                cols[name] = _floats(v[:, j])
            cols["involvement"] = [round(x, 6) for x in np.asarray(score, np.float64)[idx].tolist()]
            cols["samples"] = np.asarray(snap.n_samples, np.int64)[idx].tolist()
        return {"scalars": {"tenant": t, "window": start}, "columns": cols}

    def call_cols(idx: np.ndarray, touch: bool) -> dict:
        cols: dict = {"src": akeys[a_slots[src[idx]]].tolist(), "dst": akeys[a_slots[dst[idx]]].tolist()}
        if not touch:
            cols["weight"] = np.asarray(snap.edge_count, np.int64)[idx].tolist()
            cols["errors"] = np.asarray(snap.edge_errors, np.int64)[idx].tolist()
            cols["latency_ms"] = _floats(c_vals[idx, 2])
        return {"scalars": {"tenant": t, "window": start}, "columns": cols}

    steps = column_steps("agents", a_dec, agent_cols) + column_steps("calls", c_dec, call_cols)
    return SnapshotPlan(steps, (a_slots, a_vals, a_dec), (c_slots, c_vals, c_dec), start)
