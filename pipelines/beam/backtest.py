"""The backtest as a Beam batch pipeline (DirectRunner): the streaming job's stages over
recorded telemetry or scenarios simulated on the fly, moving Arrow record batches.

source (file | ScenarioConfig) -> columnar parse + validate -> (tenant, slice table) batches
-> event-time windows -> WindowSnapshot -> the job's FeatureStage -> PredictionStage ->
ConsensusStage (committed verdicts with certificates; disputed ones dead-lettered) ->
collected in process (``take_results``) for scoring. Dead letters go to ``<out>/deadletter``
as in the job, and the counters reconcile: read == windowed + dead-lettered.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from pipelines.backtest.columnar import (
    from_ipc,
    parse_file_columnar,
    parse_table,
    simulated_table,
    slice_tables,
    snapshot_from_table,
    to_ipc,
)
from pipelines.beam import counters
from pipelines.beam.consensus import ConsensusStage
from pipelines.beam.features import FeatureStage
from pipelines.beam.predict import PredictionStage
from pipelines.beam.transforms import WriteDeadLetters, beam_windows
from pipelines.consensus.spec import ConsensusSpec
from pipelines.inference import PredictorSpec
from pipelines.simulation.scenario import Scenario, ScenarioConfig
from pipelines.telemetry import TimestampGuard
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.sequence import ms
from pipelines.windowing import WindowSpec

DEAD, LABELS = "dead", "labels"

_LOCK = threading.Lock()
_RESULTS: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
_PROGRESS: dict[str, dict] = {}


def _put(run_id: str, kind: str, item) -> None:
    with _LOCK:
        _RESULTS[run_id][kind].append(item)


def _tick(run_id: str, bar: str, n: int = 1) -> None:
    hooks = _PROGRESS.get(run_id)
    if hooks and bar in hooks:
        with _LOCK:
            hooks[bar](n)


@dataclass
class BacktestResults:
    """What one pipeline run produced, collected in process."""

    features: dict = field(default_factory=dict)  # tenant -> (window_start_ms (W,), window_end (W,), (W, F))
    predictions: dict = field(default_factory=dict)  # (tenant, window_start_ms) -> row (committed)
    proposed: int = 0
    disputed: list = field(default_factory=list)  # (tenant, window_start_ms, reason)
    labels: list = field(default_factory=list)  # labels documents of simulated sources
    counts: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def read(self) -> int:
        return int(self.counts.get("read", 0))

    @property
    def reconciles(self) -> bool:
        c = self.counts
        dead = sum(v for k, v in c.items() if k.startswith("dead."))
        agreed = not self.proposed or c.get("consensus.committed", self.proposed) + \
            c.get("consensus.disputed", 0) == self.proposed
        return c.get("read", 0) == c.get("windowed", 0) + dead and agreed

    def merge(self, other: BacktestResults) -> BacktestResults:
        """Add a run over other sources (tenants never shared between the runs)."""
        shared = self.features.keys() & other.features.keys()
        if shared:
            raise ValueError(f"tenants {sorted(shared)[:3]} are in both runs; a tenant's windows "
                             "must come from one run")
        self.features.update(other.features)
        self.predictions.update(other.predictions)
        self.proposed += other.proposed
        self.disputed += other.disputed
        self.labels += other.labels
        self.counts = {k: self.counts.get(k, 0) + other.counts.get(k, 0)
                       for k in self.counts.keys() | other.counts.keys()}
        self.elapsed_s += other.elapsed_s
        return self


class ReadSource(beam.DoFn):
    """A file path or a ScenarioConfig -> timestamped (tenant, Arrow table) slices, dead
    letters and (simulated sources) the labels document."""

    def __init__(self, spec: WindowSpec, run_id: str):
        self.spec, self.run_id = spec, run_id

    def process(self, source):
        if isinstance(source, ScenarioConfig):
            table, labels = simulated_table(Scenario(source))
            res = parse_table(table, f"simulated:{source.tenant}", TimestampGuard())
            yield beam.pvalue.TaggedOutput(LABELS, labels)
        else:
            res = parse_file_columnar(source, TimestampGuard())
        counters.inc(self.run_id, "read", res.n_read)
        counters.inc(self.run_id, "windowed", res.table.num_rows)  # every valid row enters a window
        for (tenant, rows), start in slice_tables(res.table, self.spec):
            yield window.TimestampedValue((tenant, to_ipc(rows)), start)
        for d in res.dead:
            yield beam.pvalue.TaggedOutput(DEAD, d)
        _tick(self.run_id, "sources")


class BuildTableSnapshot(beam.DoFn):
    """(tenant, slice tables) of one window -> WindowSnapshot (vectorised)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def process(self, kv, w=beam.DoFn.WindowParam):
        tenant, tables = kv
        rows = pa.concat_tables([from_ipc(t) for t in tables])
        counters.inc(self.run_id, "windows")
        _tick(self.run_id, "windows")  # fused with the feature stage that follows
        yield snapshot_from_table(tenant, float(w.start), float(w.end), rows)


class Collect(beam.DoFn):
    def __init__(self, run_id: str, kind: str):
        self.run_id, self.kind = run_id, kind

    def process(self, item):
        if self.kind == "features":
            wf, vec = item
            item = (wf.tenant, ms(wf.window_start), wf.window_end, vec)
        elif self.kind == "predictions":
            item = {k: v for k, v in item.items() if k != "inputs"}
        _put(self.run_id, self.kind, item)
        return []


def run_backtest_pipeline(sources: list, spec: WindowSpec, out_dir: str, extractor: FeatureExtractor,
                          predictor: PredictorSpec | None = None, consensus: ConsensusSpec | None = None,
                          progress: dict | None = None) -> BacktestResults:
    """One batch run over ``sources`` (file paths and/or ScenarioConfigs). ``progress``:
    optional callbacks {"sources": f(n), "windows": f(n)}, called in process."""
    t0, run_id = time.perf_counter(), counters.new_run()
    if progress:
        _PROGRESS[run_id] = progress
    try:
        with beam.Pipeline(options=PipelineOptions(flags=[], runner="DirectRunner")) as p:
            parsed = (p | "Sources" >> beam.Create(sources, reshuffle=False)
                      | "Read" >> beam.ParDo(ReadSource(spec, run_id)).with_outputs(DEAD, LABELS,
                                                                                   main="rows"))
            parsed[DEAD] | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(out_dir, run_id))
            parsed[LABELS] | "CollectLabels" >> beam.ParDo(Collect(run_id, "labels"))
            snaps = (parsed.rows
                     | "Window" >> beam.WindowInto(beam_windows(spec))
                     | "Group" >> beam.GroupByKey()
                     | "Snapshot" >> beam.ParDo(BuildTableSnapshot(run_id)))
            rows, window_dead = snaps | "Features" >> FeatureStage(extractor, spec.slide, False, run_id)
            window_dead | "WriteWindowDead" >> beam.ParDo(WriteDeadLetters(out_dir, run_id, per_window=True))
            rows | "CollectFeatures" >> beam.ParDo(Collect(run_id, "features"))
            if predictor is not None:
                preds = rows | "Predictions" >> PredictionStage(predictor, False, run_id,
                                                                keep_inputs=consensus is not None)
                if consensus is not None:
                    preds, disputed = preds | "Consensus" >> ConsensusStage(consensus, out_dir, run_id)
                    disputed | "WriteDisputed" >> beam.ParDo(
                        WriteDeadLetters(out_dir, run_id, per_window=True))
                    disputed | "CollectDisputed" >> beam.ParDo(Collect(run_id, "disputed"))
                preds | "CollectPredictions" >> beam.ParDo(Collect(run_id, "predictions"))
    finally:
        _PROGRESS.pop(run_id, None)
    with _LOCK:
        got = _RESULTS.pop(run_id, {})
    counts = dict(counters.take(run_id))
    res = BacktestResults(counts=counts, labels=list(got.get("labels", [])))
    by_tenant: dict[str, list] = defaultdict(list)
    for tenant, start, end, vec in got.get("features", []):
        by_tenant[tenant].append((start, end, vec))
    for tenant, items in by_tenant.items():
        items.sort(key=lambda x: x[0])
        res.features[tenant] = (np.array([s for s, _, _ in items], dtype=np.int64),
                                np.array([e for _, e, _ in items]), np.stack([v for _, _, v in items]))
    for row in got.get("predictions", []):
        res.predictions[(row["tenant"], int(row["window_start"]))] = row
    res.proposed = int(counts.get("predictions", 0))
    res.disputed = [(d.source.removeprefix("consensus "), d.position, d.reason)
                    for d in got.get("disputed", [])]
    res.elapsed_s = time.perf_counter() - t0
    return res
