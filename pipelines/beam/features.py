"""Beam wiring of the feature stage: snapshots -> per-window features -> per-tenant
sequence features (keyed state when streaming, a sorted fold per tenant in batch)."""

from __future__ import annotations

import apache_beam as beam
import orjson
from apache_beam import coders
from apache_beam.transforms import window
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from pipelines import observe
from pipelines.beam import counters
from pipelines.panes import write_features
from pipelines.state_journal import StateJournal
from pipelines.telemetry import DeadLetter
from pipelines.topology.features import FeatureExtractor, WindowFeatures
from pipelines.topology.rows import non_finite
from pipelines.topology.sequence import fold, ms, next_row
from pipelines.windowing import WindowSnapshot

DEAD = "dead"


def _window_dead(reason: str, detail: str, tenant: str, start: float) -> DeadLetter:
    raw = orjson.dumps({"tenant": tenant, "window_start": start})
    return DeadLetter(reason, detail, f"window {tenant}", ms(start), raw)


class WindowFeaturesFn(beam.DoFn):
    """WindowSnapshot -> (tenant, WindowFeatures); a failure is a dead letter, not a crash."""

    def __init__(self, extractor: FeatureExtractor, run_id: str):
        self.extractor, self.run_id = extractor, run_id

    def process(self, snap: WindowSnapshot):
        try:
            with observe.stage("features", snap.tenant, ms(snap.window_start), pane=snap.pane_index):
                wf = self.extractor.window(snap)
        except Exception as err:  # noqa: BLE001 - any failure of one window is reported, the job goes on
            counters.inc(self.run_id, "window_dead.feature_error")
            yield beam.pvalue.TaggedOutput(DEAD, _window_dead(
                "feature_error", f"{type(err).__name__}: {err}", snap.tenant, snap.window_start))
            return
        yield snap.tenant, wf


def _emit(run_id: str, wf: WindowFeatures, vec):
    bad = non_finite(vec)
    if bad:
        counters.inc(run_id, "window_dead.non_finite_features")
        return beam.pvalue.TaggedOutput(DEAD, _window_dead(
            "non_finite_features", f"not finite: {', '.join(bad[:10])}", wf.tenant, wf.window_start))
    counters.inc(run_id, "feature_rows")
    return wf, vec


class SequenceFeaturesFn(beam.DoFn):
    """Streaming: the tenant's recent windows live in keyed state; with a ``journal_dir``
    (a crash-safe run) also in a ``StateJournal`` there, restored after a restart."""

    RECENT = BagStateSpec("recent", coders.PickleCoder())
    SEQ = ReadModifyWriteStateSpec("seq", coders.VarIntCoder())

    def __init__(self, extractor: FeatureExtractor, slide_s: float, run_id: str,
                 journal_dir: str | None = None):
        self.extractor, self.slide_s, self.run_id = extractor, slide_s, run_id
        self.journal = StateJournal(journal_dir, "sequence") if journal_dir else None

    def process(self, element, recent=beam.DoFn.StateParam(RECENT), seq=beam.DoFn.StateParam(SEQ)):
        _, wf = element
        known = {ms(w.window_start): w for w in recent.read()}
        n = seq.read() or 0
        if n == 0 and self.journal is not None:  # first of the tenant in this process
            got = self.journal.restore(wf.tenant, ms(wf.window_start), wf.pane_index)
            if got is not None:
                n, known = got
        vec, known = next_row(self.extractor, known, wf, self.slide_s)
        recent.clear()
        for w in known.values():
            recent.add(w)
        seq.write(n + 1)
        if self.journal is not None:
            self.journal.save(wf.tenant, n + 1, ms(wf.window_start), wf.pane_index, known)
        yield _emit(self.run_id, wf, vec)


class FoldSequenceFn(beam.DoFn):
    """Batch: all of a tenant's windows at once, folded in event-time order."""

    def __init__(self, extractor: FeatureExtractor, slide_s: float, run_id: str):
        self.extractor, self.slide_s, self.run_id = extractor, slide_s, run_id

    def process(self, element):
        _, windows = element
        for wf, vec in fold(self.extractor, list(windows), self.slide_s):
            yield _emit(self.run_id, wf, vec)


class WriteFeatures(beam.DoFn):
    """One Parquet file per (tenant, window, pane), like the snapshots."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def process(self, row):
        wf, vec = row
        write_features(self.out_dir, wf, vec)
        return []


class FeatureStage(beam.PTransform):
    """Snapshots -> feature rows (main output) and window-level dead letters (``dead``)."""

    def __init__(self, extractor: FeatureExtractor, slide_s: float, streaming: bool, run_id: str,
                 journal_dir: str | None = None):
        super().__init__()
        self.extractor, self.slide_s, self.streaming, self.run_id = extractor, slide_s, streaming, run_id
        self.journal_dir = journal_dir

    def expand(self, snaps):
        per_window = snaps | "WindowFeatures" >> beam.ParDo(
            WindowFeaturesFn(self.extractor, self.run_id)).with_outputs(DEAD, main="ok")
        keyed = per_window.ok | "Rewindow" >> beam.WindowInto(window.GlobalWindows())
        if self.streaming:
            rows = keyed | "Sequence" >> beam.ParDo(
                SequenceFeaturesFn(self.extractor, self.slide_s, self.run_id, self.journal_dir)
            ).with_outputs(DEAD, main="ok")
        else:
            rows = (keyed | "ByTenant" >> beam.GroupByKey()
                    | "Fold" >> beam.ParDo(FoldSequenceFn(self.extractor, self.slide_s, self.run_id)
                                           ).with_outputs(DEAD, main="ok"))
        dead = (per_window[DEAD], rows[DEAD]) | "WindowDead" >> beam.Flatten()
        return rows.ok, dead
