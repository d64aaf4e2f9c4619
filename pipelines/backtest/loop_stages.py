"""The pipeline's own per-window stages, called one window at a time in simulated time.

The closed-loop backtest cannot run the engines ahead of the fleet (the fleet reacts to
what AURA does), so it calls the code both engines call, window by window: the columnar
contract check (``parse_table``), the window snapshot, the feature stage (``window`` +
``next_row``), the prediction stage (``history_step`` + the ONNX model) and the consensus
stage (n validators recompute and certify the verdict). ``WindowStages.step`` takes one
tenant's telemetry rows of one closed window and answers the window's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.backtest.columnar import parse_table, snapshot_from_table
from pipelines.consensus.crypto import digest_arrays
from pipelines.consensus.messages import Request, Verdict
from pipelines.consensus.stage import ConsensusConfig, ConsensusStage
from pipelines.inference import ModelHandler, TenantHistory, history_step
from pipelines.topology.features import FeatureExtractor, WindowFeatures
from pipelines.topology.sequence import ms, next_row
from pipelines.windowing import WindowSnapshot


@dataclass
class WindowVerdict:
    """What the pipeline knows about one closed window."""

    window_start: float  # epoch s
    window_end: float
    snapshot: WindowSnapshot
    vector: np.ndarray  # the full feature vector (``FeatureExtractor.names()`` order)
    probability: float
    status: str  # ok | calibrating | out_of_distribution
    certificate: dict | None  # the consensus QC; None: disputed / not committed
    dead_letters: int = 0


@dataclass
class WindowStages:
    """One tenant's stages with their keyed state (recent windows, model history)."""

    extractor: FeatureExtractor
    predictor: ModelHandler
    validators: list[ModelHandler] | None = None  # None: no consensus (verdicts uncertified)
    slide_s: float = 10.0
    recent: dict[int, WindowFeatures] = field(default_factory=dict)
    history: TenantHistory | None = None
    stage: ConsensusStage | None = None

    def __post_init__(self):
        if self.validators:
            self.stage = ConsensusStage(self.validators, ConsensusConfig(validators=len(self.validators)))

    def step(self, tenant: str, start: float, end: float, rows: pa.Table) -> WindowVerdict:
        """Rows of the TELEMETRY schema whose event time lies in [start, end)."""
        parsed = parse_table(rows, f"loop:{tenant}:{start:.0f}")
        snap = snapshot_from_table(tenant, start, end, parsed.table)
        wf = self.extractor.window(snap)
        vec, self.recent = next_row(self.extractor, self.recent, wf, self.slide_s)
        info = self.predictor.info
        x, dt, self.history, status = history_step(self.history, ms(start), end, vec, info.seq_len,
                                                   info.calibration)
        p = float(self.predictor.run_inference(x[None], dt[None])[0])
        cert = self._certify(tenant, start, end, p, x, dt)
        return WindowVerdict(start, end, snap, vec, p, status, cert, len(parsed.dead))

    def _certify(self, tenant: str, start: float, end: float, p: float, x: np.ndarray, dt: np.ndarray
                 ) -> dict | None:
        if self.stage is None:
            return None
        bands = self.stage.cfg.bands
        v = Verdict(tenant, ms(start), ms(end), 0, p, bands.band(p), digest_arrays(x, dt))
        committed, _ = self.stage.process([Request(v, x, dt)])
        return committed[0].certificate if committed else None

    def close(self) -> None:
        if self.stage is not None:
            self.stage.close()
