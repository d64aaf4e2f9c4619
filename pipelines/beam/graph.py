"""Beam wiring of the graph sink: snapshots, feature rows and prediction rows -> Neo4j.

A thin adapter: the three streams are tagged, re-windowed into the global window, keyed by
tenant and flattened into one DoFn whose ``setup`` opens the sink (driver + constraints).
Change detection and the per-tenant write order live in ``pipelines.graph.sink``
(``SinkState``, shared by the DoFn instances of one run in this process: the DirectRunner
runs them all here). A distributed runner would key the same DoFn by tenant as a stateful
DoFn so that one tenant's windows are written by one worker at a time.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import window

from pipelines import observe
from pipelines.beam import counters
from pipelines.graph.sink import GraphSink, GraphSpec, SinkState
from pipelines.source_ledger import GRAPH_MARK, mark_pane
from pipelines.windowing import ms


class WriteGraph(beam.DoFn):
    """(tenant, (kind, payload)) -> written (or spilled) graph batches; counts them."""

    def __init__(self, spec: GraphSpec, run_id: str, mark_dir: str | None = None):
        self.spec, self.run_id, self.mark_dir = spec, run_id, mark_dir

    def setup(self):
        self.sink = GraphSink(self.spec).open()

    def process(self, element):
        _, (kind, payload) = element
        before = self.sink.stats.copy()
        with observe.stage("graph", *_window_of(kind, payload), write=kind):
            if kind == "snapshot":
                ok = self.sink.write_snapshot(payload)
            elif kind == "topology":
                ok = self.sink.write_topology(*payload)
            else:
                ok = self.sink.write_prediction(payload)
        observe.graph_write(kind, ok)
        counters.inc(self.run_id, f"graph.{'written' if ok else 'spilled'}.{kind}")
        if self.mark_dir is not None and kind == "prediction":  # written or spilled: durable
            mark_pane(self.mark_dir, GRAPH_MARK, payload["tenant"], int(payload["window_start"]),
                      int(payload["pane_index"]))
        for name in ("agent_rows", "call_rows", "agent_rows_skipped", "call_rows_skipped"):
            n = self.sink.stats[name] - before[name]
            if n:
                counters.inc(self.run_id, f"graph.{name}", n)
        return []

    def teardown(self):
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.close()
            SinkState.release(self.spec.state_key)  # instances still running keep their reference


def _window_of(kind: str, payload) -> tuple[str, int]:
    """(tenant, window start ms) of a graph payload."""
    if kind == "snapshot":
        return payload.tenant, ms(payload.window_start)
    if kind == "topology":
        return payload[0].tenant, ms(payload[0].window_start)
    return payload["tenant"], int(payload["window_start"])


def _tag(kind: str, tenant_of):
    return lambda x: (tenant_of(x), (kind, x))


class GraphStage(beam.PTransform):
    """Writes ``{"snapshot": snapshots, "topology": feature rows (WindowFeatures, vector),
    "prediction": prediction rows}`` (any subset) to the graph. With ``mark_dir`` (a
    crash-safe run), each prediction written or spilled leaves a marker for the source's
    ledger (``pipelines.source_ledger.GRAPH_MARK``)."""

    TENANT = {"snapshot": lambda s: s.tenant, "topology": lambda r: r[0].tenant,
              "prediction": lambda p: p["tenant"]}

    def __init__(self, spec: GraphSpec, run_id: str, mark_dir: str | None = None):
        super().__init__()
        self.spec, self.run_id, self.mark_dir = spec, run_id, mark_dir

    def expand(self, inputs: dict):
        parts = [pcoll | f"Tag{kind.title()}" >> beam.Map(_tag(kind, self.TENANT[kind]))
                 | f"Global{kind.title()}" >> beam.WindowInto(window.GlobalWindows())
                 for kind, pcoll in sorted(inputs.items())]
        merged = tuple(parts) | "Merge" >> beam.Flatten()
        return merged | "Write" >> beam.ParDo(WriteGraph(self.spec, self.run_id, self.mark_dir))
