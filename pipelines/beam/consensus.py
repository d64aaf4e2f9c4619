"""Beam wiring of the consensus stage: prediction rows (with their model inputs) -> committed
rows with a quorum certificate, and disputed windows as dead letters.

One global key, so every verdict goes through one chain in order; rows are batched into
blocks of up to ``max_block`` per bundle. The validators (n = 3f+1, each its own key and
predictor) live in the DoFn instance; its chain's audit log goes to ``<out>/audit/``."""

from __future__ import annotations

import time

import apache_beam as beam
import orjson
from apache_beam import coders
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from pipelines import observe
from pipelines.beam import counters
from pipelines.consensus.resume import Resuming
from pipelines.consensus.spec import INPUTS, ConsensusSpec, request
from pipelines.telemetry import DeadLetter

DISPUTED = "disputed"


class ConsensusFn(beam.DoFn):
    """(key, [prediction rows]) -> committed rows (+ certificate); disputed -> tagged output."""

    ORDER = ReadModifyWriteStateSpec("order", coders.VarIntCoder())  # one key: serial, in order

    def __init__(self, spec: ConsensusSpec, out_dir: str, run_id: str, resume: bool = False):
        self.spec, self.out_dir, self.run_id, self.resume = spec, out_dir, run_id, resume

    def setup(self):
        self.stage = self.spec.build(self.out_dir)
        if self.resume:  # a crash-safe run: what earlier runs into this output committed stays committed
            self.stage = Resuming(self.stage, self.out_dir)

    def process(self, element, order=beam.DoFn.StateParam(ORDER)):
        _, rows = element
        order.write((order.read() or 0) + len(rows))
        by_vid = {}
        requests = []
        for row in rows:
            req = request(row, self.spec.bands)
            by_vid.setdefault(req.vid, row)
            requests.append(req)
        already = getattr(self.stage, "already", 0)
        t0 = time.time_ns()
        committed, disputed = self.stage.process(requests)
        observe.block("consensus", [(r.verdict.tenant, r.verdict.window_start) for r in requests], t0,
                      time.time_ns())
        counters.inc(self.run_id, "consensus.already_committed", getattr(self.stage, "already", 0) - already)
        counters.inc(self.run_id, "consensus.committed", len(committed))
        counters.inc(self.run_id, "consensus.disputed", len(disputed))
        for c in committed:
            row = {k: v for k, v in by_vid[c.verdict.vid].items() if k != INPUTS}
            yield {**row, "certificate": c.certificate}
        for d in disputed:
            v = d.verdict
            observe.disputed(v.tenant, v.window_start, v.pane_index)
            raw = orjson.dumps({"verdict": dict(zip(("tenant", "window_start", "window_end", "pane_index",
                                                     "probability", "band", "digest"), v.canon())),
                                "objections": d.objections})
            detail = ("committed before a restart with another probability or inputs"
                      if d.reason == "conflicts_with_committed"
                      else f"{len(d.objections)} of {len(self.spec.backends)} validators objected")
            yield beam.pvalue.TaggedOutput(DISPUTED, DeadLetter(
                f"consensus_{d.reason}", detail, f"consensus {v.tenant}", v.window_start, raw))

    def teardown(self):
        stage = getattr(self, "stage", None)
        if stage is not None:
            stage.close()
            for r in stage.replicas:  # the validators' predictors were built here (Triton: connections)
                r.validator.predictor.close()


class ConsensusStage(beam.PTransform):
    """Prediction rows -> (committed rows with ``certificate``, disputed dead letters)."""

    def __init__(self, spec: ConsensusSpec, out_dir: str, run_id: str, resume: bool = False):
        super().__init__()
        self.spec, self.out_dir, self.run_id, self.resume = spec, out_dir, run_id, resume

    def expand(self, preds):
        n = self.spec.max_block
        out = (preds
               | "Batch" >> beam.BatchElements(min_batch_size=n, max_batch_size=n)
               | "OneKey" >> beam.Map(lambda rows: (0, rows))
               | "Agree" >> beam.ParDo(ConsensusFn(self.spec, self.out_dir, self.run_id, self.resume)
                                        ).with_outputs(DISPUTED, main="committed"))
        return out["committed"], out[DISPUTED]
