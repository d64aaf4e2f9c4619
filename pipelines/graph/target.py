"""Where the graph goes: a Neo4j server from configuration / environment, or, when no URI is
configured, the embedded ArcadeDB Bolt server with its data under the run's output folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from pipelines.graph.server import DATABASE, EmbeddedGraphServer
from pipelines.graph.sink import SPILL_NAME, GraphSink, GraphSpec, pending_batches


@dataclass(frozen=True)
class GraphSettings:
    """The graph part of a run's configuration (``RunConfig.graph_settings``)."""

    uri: str | None = None  # None: the embedded server under <out>/graph
    user: str | None = None
    password: str | None = None
    database: str | None = None
    epsilon: float = 0.05
    refresh_windows: int = 10
    batch_size: int = 5000
    top_k: int = 5
    slide_ms: int | None = None
    latency_ref_ms: float = 50.0
    timeout_ms: float = 1000.0
    give_up_s: float = 20.0  # one delivery gives up (and spills) after this long
    stall_timeout_s: float = 15.0  # an attempt that commits no transaction this long is abandoned
    parallel: int = 1  # concurrent transactions for the agent/CALLS updates of a window

    def resolved(self) -> GraphSettings:
        """Environment fallbacks: NEO4J_URI, NEO4J_USER (or NEO4J_USERNAME), NEO4J_PASSWORD,
        NEO4J_DATABASE."""
        env = os.environ
        return replace(self, uri=self.uri or env.get("NEO4J_URI") or None,
                       user=self.user or env.get("NEO4J_USER") or env.get("NEO4J_USERNAME") or "neo4j",
                       password=self.password if self.password is not None else env.get("NEO4J_PASSWORD", ""),
                       database=self.database or env.get("NEO4J_DATABASE") or DATABASE)


def graph_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "graph")


def spill_path(out_dir: str) -> str:
    return os.path.join(out_dir, SPILL_NAME)


def _spec(s: GraphSettings, uri: str, user: str, password: str, out_dir: str) -> GraphSpec:
    return GraphSpec(uri, user, password, s.database or DATABASE, epsilon=s.epsilon,
                     refresh_windows=s.refresh_windows, batch_size=s.batch_size, top_k=s.top_k,
                     slide_ms=s.slide_ms, spill_path=spill_path(out_dir),
                     latency_ref_ms=s.latency_ref_ms, timeout_ms=s.timeout_ms, give_up_s=s.give_up_s,
                     stall_timeout_s=s.stall_timeout_s, parallel=s.parallel)


@contextmanager
def open_graph(settings: GraphSettings, out_dir: str, replay: bool = True,
               log=print, on_server=None) -> Iterator[GraphSpec]:
    """A GraphSpec for the run: the configured server, or the embedded one started here
    (and stopped by PID on exit; ``on_server`` is told of it). Batches spilled by an earlier
    run are replayed first."""
    s = settings.resolved()
    server = None
    if s.uri:
        spec = _spec(s, s.uri, s.user, s.password, out_dir)
    else:
        server = EmbeddedGraphServer(graph_dir(out_dir)).start()
        log(f"graph: embedded ArcadeDB Bolt server (pid {server.process.pid}) on {server.uri}, "
            f"data in {graph_dir(out_dir)}")
        spec = _spec(s, server.uri, *server.auth, out_dir)
        if on_server is not None:
            on_server(server)
    try:
        if replay and pending_batches(spec.spill_path):
            sink = GraphSink(spec)
            try:
                log("graph: " + sink.replay().render())
            finally:
                sink.close()
        yield spec
    finally:
        if server is not None:
            code = server.stop()
            if code not in (0, None):
                print(f"graph: embedded server exited with {code}; see {server.log_path}", file=sys.stderr)
