"""The windowing job on Beam's DirectRunner, streaming and batch.

Streaming: the stream source (``pipelines.stream_source``) produces window panes (decided by
each tenant's own watermark, ``pipelines.tenant_time``) and dead letters; they enter Beam's
global window through a ``TestStream`` (``pipelines.beam.source_panes``) - scripted (tests)
or served live over Beam's TestStreamService gRPC protocol (landing directory, files read in
turn). On the Python
DirectRunner this is the streaming entry point that works: splittable DoFns that resume
(``fileio.MatchContinuously``) fail there with "ProcessKeyedElements/GroupByKey was not
replaced". Batch: files -> parse -> fixed or sliding windows -> snapshots.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace

import apache_beam as beam
from apache_beam import coders
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.test_stream_service import TestStreamServiceController
from apache_beam.transforms import window

from pipelines import observe
from pipelines.beam import counters
from pipelines.beam.consensus import ConsensusStage
from pipelines.beam.features import FeatureStage, WriteFeatures
from pipelines.beam.graph import GraphStage
from pipelines.beam.predict import PredictionStage, WritePredictions
from pipelines.beam.source_panes import DEAD, PANES, SnapshotPane, steps
from pipelines.beam.transforms import WindowedSnapshots, WriteDeadLetters, WriteSnapshots
from pipelines.consensus.spec import ConsensusSpec
from pipelines.graph.sink import GraphSpec
from pipelines.inference import PredictorSpec
from pipelines.run_summary import RunSummary
from pipelines.source_ledger import GRAPH_MARK
from pipelines.stream_source import (
    Event,
    EventBuilder,
    LandingDirectory,
    SourceStats,
    trace_parse,
    window_counts,
)
from pipelines.telemetry import TimestampGuard, parse_file
from pipelines.topology.features import FeatureExtractor
from pipelines.windowing import WindowSpec, slice_batches

RECORDS = "records"
_CODER = coders.PickleCoder()
_PB = beam_runner_api_pb2.TestStreamPayload


def _fill(summary: RunSummary, counts: Counter) -> RunSummary:
    summary.windowed = counts["windowed"]
    summary.panes = counts["panes"]
    summary.windows = counts["windows"]
    summary.feature_rows = counts["feature_rows"]
    summary.predictions = counts["predictions"]
    summary.dead = _prefixed(counts, "dead.")
    summary.window_dead = _prefixed(counts, "window_dead.")
    summary.graph = _prefixed(counts, "graph.")
    summary.consensus = _prefixed(counts, "consensus.")
    summary.verdicts = _prefixed(counts, "verdicts.")
    return summary


def _prefixed(counts: Counter, prefix: str) -> Counter:
    return Counter({k[len(prefix):]: v for k, v in counts.items() if k.startswith(prefix) and v})


def _windowing_and_sinks(records, dead, spec: WindowSpec, out_dir: str, streaming: bool,
                         run_id: str, extractor: FeatureExtractor | None,
                         predictor: PredictorSpec | None = None, graph: GraphSpec | None = None,
                         consensus: ConsensusSpec | None = None,
                         final: frozenset[tuple[str, int]] | None = None):
    """The stages after the source. ``final`` (a crash-safe landing run; None otherwise): the
    windows already final on disk; the run then also journals keyed state and resumes the
    consensus chain's commits from ``out_dir``."""
    resume = final is not None
    journal = out_dir if resume else None
    if streaming:  # ``records``: references to the source's panes
        snaps = records | "Snapshots" >> beam.ParDo(SnapshotPane(run_id, final or frozenset()))
    else:
        snaps = records | "Windows" >> WindowedSnapshots(spec, run_id)
    snaps | "WriteSnapshots" >> beam.ParDo(WriteSnapshots(out_dir))
    dead | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(out_dir, run_id))
    rows = preds = None
    if extractor is not None:
        rows, window_dead = snaps | "Features" >> FeatureStage(extractor, spec.slide, streaming, run_id,
                                                               journal)
        rows | "WriteFeatures" >> beam.ParDo(WriteFeatures(out_dir))
        window_dead | "WriteWindowDead" >> beam.ParDo(WriteDeadLetters(out_dir, run_id, per_window=True))
        if predictor is not None:
            preds = rows | "Predictions" >> PredictionStage(predictor, streaming, run_id,
                                                            keep_inputs=consensus is not None,
                                                            journal_dir=journal)
            if consensus is not None:  # only committed verdicts (with their certificate) go on
                preds, disputed = preds | "Consensus" >> ConsensusStage(consensus, out_dir, run_id, resume)
                disputed | "WriteDisputed" >> beam.ParDo(WriteDeadLetters(out_dir, run_id, per_window=True))
            preds | "WritePredictions" >> beam.ParDo(WritePredictions(out_dir, run_id))
    if graph is not None:  # predictions plus topology to Neo4j / the embedded Bolt server
        parts = {"snapshot": snaps, "topology": rows, "prediction": preds}
        {k: v for k, v in parts.items() if v is not None} | "Graph" >> GraphStage(
            replace(graph, state_key=run_id), run_id, out_dir if resume else None)
    return snaps


# -- streaming ---------------------------------------------------------------------------
def scripted_test_stream(events: Iterable[Event]) -> TestStream:
    """A TestStream that replays source events (panes, dead letters)."""
    ts = TestStream(coder=_CODER, output_tags={PANES, DEAD})
    for step in steps(events):
        if step[0] == "add":
            ts.add_elements([window.TimestampedValue(v, t) for v, t in step[2]], tag=step[1])
        else:
            for tag in (PANES, DEAD):
                ts.advance_watermark_to(step[1], tag=tag)
    for tag in (PANES, DEAD):
        ts.advance_watermark_to_infinity(tag=tag)
    return ts


def _to_proto(step: tuple) -> list:
    if step[0] == "add":
        return [_PB.Event(element_event=_PB.Event.AddElements(tag=step[1], elements=[
            _PB.TimestampedElement(encoded_element=_CODER.encode(v), timestamp=int(round(t * 1e6)))
            for v, t in step[2]]))]
    micros = int(round(step[1] * 1e6))
    return [_PB.Event(watermark_event=_PB.Event.AdvanceWatermark(tag=tag, new_watermark=micros))
            for tag in (PANES, DEAD)]


class _EventReader:
    """Adapts a source event iterator to TestStreamServiceController's reader protocol."""

    def __init__(self, events: Iterator[Event]):
        self._events = events
        self.finished = False

    def read_multiple(self, _tags):
        for step in steps(self._events):
            yield from _to_proto(step)
        self.finished = True


def _streaming_options() -> PipelineOptions:
    return PipelineOptions(flags=[], runner="BundleBasedDirectRunner", streaming=True)


def run_scripted(events: list[Event], stats: SourceStats, spec: WindowSpec, out_dir: str,
                 extractor: FeatureExtractor | None = None,
                 predictor: PredictorSpec | None = None, graph: GraphSpec | None = None,
                 consensus: ConsensusSpec | None = None) -> RunSummary:
    """Streaming run over a fixed list of source events (tests, fixed files)."""
    t0, run_id = time.perf_counter(), counters.new_run()
    with beam.Pipeline(options=_streaming_options()) as p:
        outs = p | "Source" >> scripted_test_stream(events)
        _windowing_and_sinks(outs[PANES], outs[DEAD], spec, out_dir, True, run_id, extractor,
                             predictor, graph, consensus)
    summary = _streaming_summary(out_dir, stats, run_id)
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def run_live(events: Iterator[Event], stats: SourceStats, spec: WindowSpec, out_dir: str,
             extractor: FeatureExtractor | None = None,
             predictor: PredictorSpec | None = None, graph: GraphSpec | None = None,
             consensus: ConsensusSpec | None = None,
             final: frozenset[tuple[str, int]] | None = None) -> RunSummary:
    """Streaming run over a live event iterator (a landing directory, or files read in
    turn), served to the TestStream over gRPC on loopback; ends when the iterator does.
    ``stats`` is the source's live counter object; ``final``: see ``_windowing_and_sinks``."""
    t0, run_id = time.perf_counter(), counters.new_run()
    reader = _EventReader(events)
    service = TestStreamServiceController(reader)  # binds localhost on a free port
    service.start()
    try:
        with beam.Pipeline(options=_streaming_options()) as p:
            outs = p | "Source" >> TestStream(coder=_CODER, output_tags={PANES, DEAD},
                                              endpoint=service.endpoint)
            _windowing_and_sinks(outs[PANES], outs[DEAD], spec, out_dir, True, run_id, extractor,
                                 predictor, graph, consensus, final)
    finally:
        service.stop()
    if not reader.finished:  # the TestStream ends quietly on a broken RPC: never pass that off
        raise RuntimeError("the streaming source stopped before its end (event service lost)")
    summary = _streaming_summary(out_dir, stats, run_id)
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _streaming_summary(out_dir: str, stats: SourceStats, run_id: str) -> RunSummary:
    """The run's counters; records windowed are the source's (each once, whatever its panes)."""
    summary = _fill(RunSummary("streaming", out_dir, read=stats.read, files=stats.files),
                    counters.take(run_id))
    summary.windowed = stats.emitted
    return summary


def run_landing(source: LandingDirectory, out_dir: str, extractor: FeatureExtractor | None = None,
                predictor: PredictorSpec | None = None, graph: GraphSpec | None = None,
                consensus: ConsensusSpec | None = None) -> RunSummary:
    """Streaming run over a landing directory until the source ends. A source with a ledger
    (``out_dir``) is told which outputs a final window needs, and the summary is then the
    reconciliation over every run into ``out_dir``."""
    source.outputs = tuple(k for k, on in (("features", extractor), ("predictions", predictor),
                                           (GRAPH_MARK, predictor and graph)) if on)
    summary = run_live(source.events(), source.stats, source.spec, out_dir, extractor, predictor,
                       graph, consensus, source.final_windows if source.ledger is not None else None)
    history = source.finish()
    if history:
        summary.ledger = history
        summary.files, summary.read, summary.windowed = history["files"], history["read"], history["windowed"]
        summary.dead = Counter(history["dead_by_reason"])
        summary.windows = history["windows"]
    return summary


def run_files_streaming(paths: list[str], spec: WindowSpec, out_dir: str, lag_s: float = 5.0,
                        guard: TimestampGuard | None = None,
                        extractor: FeatureExtractor | None = None,
                        predictor: PredictorSpec | None = None, graph: GraphSpec | None = None,
                        consensus: ConsensusSpec | None = None) -> RunSummary:
    """Streaming run over fixed files, read in order as if they landed one by one (each
    tenant's watermark trails its own largest event time by ``lag_s``)."""
    builder = EventBuilder(spec, guard)

    def events() -> Iterator[Event]:
        for path in paths:
            yield from builder.file_then_advance(path, lag_s)
        yield from builder.flush()

    return run_live(events(), builder.stats, spec, out_dir, extractor, predictor, graph, consensus)


# -- batch -------------------------------------------------------------------------------
class ParseFile(beam.DoFn):
    """A file -> timestamped (tenant, batch) elements and dead letters (tagged output)."""

    def __init__(self, spec: WindowSpec, run_id: str):
        self.spec, self.run_id = spec, run_id

    def process(self, path: str):
        t0 = time.time_ns()
        res = parse_file(path, TimestampGuard())
        counters.inc(self.run_id, "read", res.n_read)
        observe.records(res.records, res.dead)
        trace_parse(window_counts(res.records, self.spec), path, t0)
        for element, start in slice_batches(res.records, self.spec):
            yield window.TimestampedValue(element, start)
        for d in res.dead:
            yield beam.pvalue.TaggedOutput(DEAD, d)


def run_batch(paths: list[str], spec: WindowSpec, out_dir: str,
              extractor: FeatureExtractor | None = None,
             predictor: PredictorSpec | None = None, graph: GraphSpec | None = None,
             consensus: ConsensusSpec | None = None) -> RunSummary:
    """Batch run (FnApiRunner under the DirectRunner) over a fixed set of files."""
    t0, run_id = time.perf_counter(), counters.new_run()
    with beam.Pipeline(options=PipelineOptions(flags=[], runner="DirectRunner")) as p:
        parsed = (p | "Files" >> beam.Create(paths)
                  | "Parse" >> beam.ParDo(ParseFile(spec, run_id)).with_outputs(DEAD, main=RECORDS))
        _windowing_and_sinks(parsed[RECORDS], parsed[DEAD], spec, out_dir, False, run_id, extractor,
                             predictor, graph, consensus)
    counts = counters.take(run_id)
    summary = _fill(RunSummary("batch", out_dir, read=counts["read"], files=len(paths)), counts)
    summary.elapsed_s = time.perf_counter() - t0
    return summary
