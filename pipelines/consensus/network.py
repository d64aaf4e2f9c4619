"""A deterministic in-process network for replicas: seeded delays (so reordering), drops and
partitions before a global stabilisation time (GST), reliable delivery within ``delay[1]``
after it. Nodes are named; a node's route table says which node(s) stand for a replica id
(so one Byzantine replica can show different faces to different peers)."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.consensus.messages import Submit, Withdraw
from pipelines.consensus.replica import ALL, CLIENT


@dataclass
class NetConfig:
    seed: int = 0
    delay: tuple[float, float] = (0.0, 0.0)  # uniform one-way delay, seconds
    drop: float = 0.0  # drop probability before GST
    gst: float = 0.0  # from here on: no drops, no partitions
    partitions: list[tuple[float, float, list[set[str]]]] = field(default_factory=list)  # start, end, groups
    tick: float = 0.05  # how often nodes' timers are checked


class Network:
    """Messages in, messages out: delivers node outputs to nodes, on a simulated clock."""

    def __init__(self, nodes: dict[str, object], cfg: NetConfig | None = None,
                 routes: dict[str, dict[int, list[str]]] | None = None,
                 observer: Callable[[str, int, object], None] | None = None):
        cfg = cfg or NetConfig()
        self.nodes, self.cfg, self.observer = nodes, cfg, observer
        self.n = 1 + max(node.rid for node in nodes.values())
        default = {}
        for name, node in nodes.items():
            default.setdefault(node.rid, []).append(name)
        self.routes = {name: {r: default.get(r, []) for r in range(self.n)} for name in nodes}
        for name, table in (routes or {}).items():
            self.routes[name].update(table)
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self._q: list = []
        self._seq = 0
        self.client: list = []  # (time, sender node, message) sent to CLIENT
        self.sent = self.dropped = 0

    def _cut(self, a: str, b: str, t: float) -> bool:
        for start, end, groups in self.cfg.partitions:
            if start <= t < end and not any(a in g and b in g for g in groups):
                return True
        return False

    def _push(self, t: float, dest: str, msg) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, dest, msg))

    def emit(self, src: str, outs: list) -> None:
        for dest_rid, msg in outs:
            if self.observer is not None:
                self.observer(src, dest_rid, msg)
            if dest_rid == CLIENT:
                self.client.append((self.now, src, msg))
                continue
            rids = range(self.n) if dest_rid == ALL else (dest_rid,)
            for r in rids:
                for dest in self.routes[src].get(r, []):
                    self._deliver(src, dest, msg)

    def _deliver(self, src: str, dest: str, msg) -> None:
        self.sent += 1
        if dest == src:
            self._push(self.now, dest, msg)
            return
        t = self.now
        if t < self.cfg.gst and (self.rng.random() < self.cfg.drop or self._cut(src, dest, t)):
            self.dropped += 1
            return
        lo, hi = self.cfg.delay
        self._push(t + (self.rng.uniform(lo, hi) if hi > 0 else 0.0), dest, msg)

    def submit(self, requests, to: list[str] | None = None) -> None:
        """The client's requests reach every (named) node reliably, after a network delay."""
        for name in to or list(self.nodes):
            lo, hi = self.cfg.delay
            self._push(self.now + (self.rng.uniform(lo, hi) if hi > 0 else 0.0), name,
                       Submit(tuple(requests)))

    def withdraw(self, vids) -> None:
        for name in self.nodes:
            self._push(self.now, name, Withdraw(tuple(vids)))

    def step(self) -> bool:
        """Deliver the next message; False when none is queued."""
        if not self._q:
            return False
        t, _, dest, msg = heapq.heappop(self._q)
        self.now = max(self.now, t)
        self.emit(dest, self.nodes[dest].on_message(msg, self.now))
        return True

    def tick(self) -> None:
        for name, node in self.nodes.items():
            self.emit(name, node.on_tick(self.now))

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> None:
        """Deliver messages and tick timers every ``cfg.tick`` until ``until`` (or ``stop()``)."""
        next_tick = self.now
        while self.now < until:
            if stop is not None and stop():
                return
            if self._q and self._q[0][0] <= next_tick:
                self.step()
                continue
            self.now = max(self.now, next_tick)
            self.tick()
            next_tick = self.now + self.cfg.tick

    def drain(self) -> None:
        """Deliver everything queued (zero-delay networks)."""
        while self.step():
            pass
