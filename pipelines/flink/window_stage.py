"""What happens to one closed (tenant, window) in Python: snapshot, features, prediction,
consensus, graph and output files. No Flink imports: the keyed function (``functions``)
passes in the tenant's state and gets it back updated.

Every output is keyed by (tenant, window, pane), so a replay after recovery overwrites
rather than duplicates: Parquet per window like the Beam job, a ledger JSON per window
(counts for the reconciliation and timings), window-level dead letters as JSON per window.
The verdict (prediction, consensus) comes first, the snapshot and feature Parquet files after
it, the ledger last: a window without its ledger is processed again after a restart.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import orjson

from pipelines import observe
from pipelines.consensus.resume import Resuming
from pipelines.consensus.spec import INPUTS, ConsensusSpec, request
from pipelines.flink.assemble import fresh_count, jvm_times, window_snapshot
from pipelines.graph.sink import GraphSink, GraphSpec
from pipelines.inference import PredictorSpec, TenantHistory, history_step
from pipelines.panes import write_features, write_snapshot
from pipelines.predictions import prediction_row, write_prediction
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.rows import non_finite
from pipelines.topology.sequence import ms, next_row
from pipelines.windowing import build_snapshot
from schemas.arrow import METRICS

LEDGER, WINDOW_DEAD = "windows", "window_deadletter"


@dataclass(frozen=True)
class StageSpec:
    """Everything a worker builds its stage from (picklable)."""

    out_dir: str
    size_ms: int
    slide_ms: int
    extractor: FeatureExtractor | None = None
    predictor: PredictorSpec | None = None
    consensus: ConsensusSpec | None = None
    graph: GraphSpec | None = None
    resume: bool = False  # restored from a checkpoint: verdicts committed before stay committed


@dataclass
class TenantState:
    """The tenant's keyed state: recent window features and the prediction history (recent
    feature vectors and the calibration baseline)."""

    recent: dict = field(default_factory=dict)
    history: TenantHistory = field(default_factory=TenantHistory)


def _atomic_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(obj))
    os.replace(tmp, path)


class WindowStage:
    """Built once per worker (``open``); ``process`` handles one closed window."""

    def __init__(self, spec: StageSpec):
        self.spec = spec
        self.predictor = self.validators = self.sink = None
        if spec.predictor is not None:
            self.predictor = spec.predictor.build()
            self.predictor.load_model()
        if spec.consensus is not None:
            self.validators = spec.consensus.build(spec.out_dir)
            if spec.resume:  # windows after the checkpoint are processed again: never commit twice
                self.validators = Resuming(self.validators, spec.out_dir)
        if spec.graph is not None:
            self.sink = GraphSink(replace(spec.graph, state_key=f"flink-{os.getpid()}-{id(self)}")).open()
        if spec.extractor is not None:
            warm_up(spec.extractor, spec.slide_ms / 1000)

    def close(self) -> None:
        if self.validators is not None:
            self.validators.close()
        if self.sink is not None:
            self.sink.close()

    def _dead(self, reason: str, detail: str, tenant: str, start_ms: int) -> None:
        path = os.path.join(self.spec.out_dir, WINDOW_DEAD, f"tenant={tenant}", f"window={start_ms}.json")
        _atomic_json(path,
                     {"reason": reason, "detail": detail, "source": f"window {tenant}", "position": start_ms,
                      "raw": json.dumps({"tenant": tenant, "window_start": start_ms / 1000})})

    def process(self, tenant: str, start_ms: int, end_ms: int, heads: bytes, meta: bytes,
                state: TenantState) -> dict:
        """Everything for one window (its columns from the JVM, ``assemble``); returns its
        ledger entry (also written to disk). Times in the ledger: ``jvm_closed_at`` (the JVM
        closed the window), ``jvm_built_at`` (its columns built), ``closed_at`` (it reached
        Python), ``committed_at`` (verdict written), ``written_at`` (Parquet files written)."""
        received = time.time()
        out = self.spec.out_dir
        with observe.stage("window", tenant, start_ms, pane=0):
            snap, event_times = window_snapshot(tenant, start_ms, end_ms, heads, meta)
            fresh = fresh_count(event_times, start_ms, self.spec.size_ms, self.spec.slide_ms)
        observe.window_fired(tenant, start_ms, 0)
        observe.windowed(tenant, fresh)
        later = [lambda: write_snapshot(out, snap)]  # Parquet once the verdict is out
        ledger = {"tenant": tenant, "window_start": start_ms, "window_end": end_ms,
                  "n_records": snap.n_records,
                  "n_fresh": fresh, "n_duplicates": snap.n_duplicates, "feature_row": False,
                  "prediction": False, "committed": False, "disputed": False, "window_dead": None,
                  "graph": {}, "closed_at": received}
        ledger["jvm_closed_at"], ledger["jvm_built_at"] = jvm_times(meta)
        if self.sink is not None:
            ledger["graph"]["snapshot"] = self._graph("snapshot", tenant, start_ms, self.sink.write_snapshot,
                                                      snap)
        if self.spec.extractor is not None:
            self._features(snap, state, ledger, later)
        ledger["committed_at"] = time.time()
        for write in later:
            write()
        ledger["written_at"] = time.time()
        _atomic_json(os.path.join(out, LEDGER, f"tenant={tenant}", f"window={start_ms}.json"), ledger)
        return ledger

    def _features(self, snap, state: TenantState, ledger: dict, later: list) -> None:
        ex, tenant, start_ms = self.spec.extractor, snap.tenant, ms(snap.window_start)
        with observe.stage("features", tenant, start_ms, pane=0):
            try:
                wf = ex.window(snap)
            except Exception as err:  # noqa: BLE001 - one window's failure is a dead letter, not a crash
                ledger["window_dead"] = "feature_error"
                self._dead("feature_error", f"{type(err).__name__}: {err}", tenant, start_ms)
                return
            vec, state.recent = next_row(ex, state.recent, wf, self.spec.slide_ms / 1000)
        bad = non_finite(vec)
        if bad:
            ledger["window_dead"] = "non_finite_features"
            self._dead("non_finite_features", f"not finite: {', '.join(bad[:10])}", tenant, start_ms)
            return
        ledger["feature_row"] = True
        later.append(lambda: write_features(self.spec.out_dir, wf, vec))
        if self.sink is not None:
            ledger["graph"]["topology"] = self._graph("topology", tenant, start_ms, self.sink.write_topology,
                                                      wf, vec)
        if self.predictor is not None:
            self._predict(wf, vec, state, ledger)

    def _predict(self, wf, vec: np.ndarray, state: TenantState, ledger: dict) -> None:
        info = self.predictor.info
        if isinstance(state.history, dict):  # keyed state restored from before TenantHistory
            state.history = TenantHistory(state.history)
        tenant, start_ms = wf.tenant, ms(wf.window_start)
        with observe.stage("predict", tenant, start_ms, pane=0):
            x, dt, state.history, status = history_step(state.history, start_ms, wf.window_end, vec,
                                                        info.seq_len, calibration=info.calibration)
            t0 = time.perf_counter()
            p = float(self.predictor.run_inference(x[None], dt[None])[0])
            observe.inference(time.perf_counter() - t0)
        ledger["prediction"] = True
        row = {**prediction_row(wf, p, dt, status, self.predictor), "certificate": None}
        if self.validators is not None:
            t0 = time.time_ns()
            committed, disputed = self.validators.process([request({**row, INPUTS: (x, dt)},
                                                                   self.spec.consensus.bands)])
            observe.block("consensus", [(tenant, start_ms)], t0, time.time_ns())
            if disputed:
                observe.disputed(tenant, start_ms, 0)
                d = disputed[0]
                ledger["disputed"] = True
                ledger["window_dead"] = f"consensus_{d.reason}"
                self._dead(f"consensus_{d.reason}", f"{len(d.objections)} validators objected", wf.tenant,
                           row["window_start"])
                return
            ledger["committed"] = True
            row["certificate"] = committed[0].certificate
        write_prediction(self.spec.out_dir, row)
        ledger["probability"], ledger["status"] = p, status  # status: only for a written verdict
        if self.sink is not None:
            ledger["graph"]["prediction"] = self._graph("prediction", tenant, start_ms,
                                                        self.sink.write_prediction, row)

    @staticmethod
    def _graph(kind: str, tenant: str, start_ms: int, write, *payload) -> bool:
        """One graph write, timed, traced and counted."""
        with observe.stage("graph", tenant, start_ms, write=kind):
            ok = write(*payload)
        observe.graph_write(kind, ok)
        return ok


def preload(spec: StageSpec) -> None:
    """Import what a stage's first window needs (feature stack, ONNX Runtime) without building
    it. A local run's PyFlink Python operators run in the driver's process (loopback) and open
    at their first bundle, i.e. when the first window closes: preloaded by the driver before
    the job starts, they open in a fraction of a second instead of ~3 s."""
    if spec.extractor is not None:
        warm_up(spec.extractor, spec.slide_ms / 1000)
    if spec.predictor is not None or spec.consensus is not None:
        import onnxruntime  # noqa: F401


def warm_up(extractor: FeatureExtractor, slide_s: float) -> None:
    """Features of two tiny windows, written nowhere: the extractor's lazy imports
    (persistence backend, scipy, scikit-learn: ~2.5 s) happen at start-up, not in the first windows."""
    recs = [{"agent_id": a, "event_time": t, **{m: 1.0 for m in METRICS},
             "calls": [{"dst": b, "count": 1, "errors": 0, "latency_ms": 1.0}]}
            for t in (1.0, 11.0) for a, b in (("a", "b"), ("b", "c"), ("c", "a"))]
    recent: dict = {}
    try:
        for start in (0.0, 10.0):
            snap = build_snapshot("warm-up", start, start + 10.0, [r for r in recs if start <= r["event_time"]
                                                                   < start + 10.0])
            _, recent = next_row(extractor, recent, extractor.window(snap), slide_s)
    except Exception:  # noqa: BLE001 - only a warm-up: the real windows report their own errors
        pass

