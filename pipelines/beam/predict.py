"""Beam wiring of the prediction stage: feature rows -> cascade probability per window.

The tenant's recent feature vectors and calibration baseline (one ``TenantHistory``) live
in keyed state (streaming) or come from a sorted fold per tenant (batch); the predictor is
loaded once per DoFn instance (``setup``). Every row carries the verdict's ``status``
(``pipelines.calibration``: ok, calibrating, out_of_distribution).
"""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms import window
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from pipelines import observe
from pipelines.beam import counters
from pipelines.consensus.spec import INPUTS
from pipelines.inference import PredictorSpec, TenantHistory, history_step
from pipelines.predictions import prediction_row, write_prediction
from pipelines.state_journal import StateJournal
from pipelines.topology.sequence import ms


class _Predicts(beam.DoFn):
    def __init__(self, spec: PredictorSpec, run_id: str, keep_inputs: bool = False,
                 journal_dir: str | None = None):
        self.spec, self.run_id, self.keep_inputs = spec, run_id, keep_inputs
        self.journal = StateJournal(journal_dir, "predict") if journal_dir else None

    def setup(self):
        self.predictor = self.spec.build()
        self.predictor.load_model()

    def teardown(self):
        predictor = getattr(self, "predictor", None)
        if predictor is not None:
            predictor.close()

    def _step(self, state: TenantHistory | None, wf, vec) -> tuple[dict, TenantHistory]:
        """The prediction row of one window pane and the tenant's updated state."""
        info = self.predictor.info
        with observe.stage("predict", wf.tenant, ms(wf.window_start), pane=wf.pane_index):
            x, dt, state, status = history_step(state, ms(wf.window_start), wf.window_end, vec, info.seq_len,
                                                calibration=info.calibration)
            return self._row(wf, x, dt, status), state

    def _row(self, wf, x, dt, status: str) -> dict:
        t0 = time.perf_counter()
        p = float(self.predictor.run_inference(x[None], dt[None])[0])
        observe.inference(time.perf_counter() - t0)
        counters.inc(self.run_id, "predictions")
        extra = {INPUTS: (x, dt)} if self.keep_inputs else {}  # for the consensus validators
        return {**extra, **prediction_row(wf, p, dt, status, self.predictor)}


class PredictStreaming(_Predicts):
    """The tenant's ``TenantHistory`` in keyed state (and, in a crash-safe run, journalled)."""

    RECENT = BagStateSpec("history", coders.PickleCoder())
    SEQ = ReadModifyWriteStateSpec("seq", coders.VarIntCoder())

    def process(self, element, history=beam.DoFn.StateParam(RECENT), seq=beam.DoFn.StateParam(SEQ)):
        _, (wf, vec) = element
        stored = list(history.read())  # one TenantHistory (none before the tenant's first window)
        before, n = (stored[-1] if stored else None), seq.read() or 0
        if n == 0 and self.journal is not None:  # first of the tenant in this process
            got = self.journal.restore(wf.tenant, ms(wf.window_start), wf.pane_index)
            if got is not None:
                n, before = got
        row, state = self._step(before, wf, vec)
        history.clear()
        history.add(state)
        seq.write(n + 1)
        if self.journal is not None:
            self.journal.save(wf.tenant, n + 1, ms(wf.window_start), wf.pane_index, state)
        yield row


class PredictBatch(_Predicts):
    def process(self, element):
        _, rows = element
        state: TenantHistory | None = None
        for wf, vec in sorted(rows, key=lambda r: (r[0].window_start, r[0].pane_index)):
            row, state = self._step(state, wf, vec)
            yield row


class WritePredictions(beam.DoFn):
    """One Parquet file per (tenant, window, pane), like the snapshots; counts the written
    verdicts by status (``verdicts.<status>``) when given the run id."""

    def __init__(self, out_dir: str, run_id: str | None = None):
        self.out_dir, self.run_id = out_dir, run_id

    def process(self, row: dict):
        if self.run_id is not None:
            counters.inc(self.run_id, f"verdicts.{row['status']}")
        write_prediction(self.out_dir, row)
        return []


class PredictionStage(beam.PTransform):
    """(WindowFeatures, vector) rows -> prediction rows (dicts, PREDICTION_ROW)."""

    def __init__(self, spec: PredictorSpec, streaming: bool, run_id: str, keep_inputs: bool = False,
                 journal_dir: str | None = None):
        super().__init__()
        self.spec, self.streaming, self.run_id, self.keep_inputs = spec, streaming, run_id, keep_inputs
        self.journal_dir = journal_dir

    def expand(self, rows):
        keyed = (rows | "KeyByTenant" >> beam.Map(lambda r: (r[0].tenant, r))
                 | "Global" >> beam.WindowInto(window.GlobalWindows()))
        if self.streaming:
            return keyed | "Predict" >> beam.ParDo(PredictStreaming(self.spec, self.run_id, self.keep_inputs,
                                                                    self.journal_dir))
        return (keyed | "ByTenant" >> beam.GroupByKey()
                | "Predict" >> beam.ParDo(PredictBatch(self.spec, self.run_id, self.keep_inputs)))
