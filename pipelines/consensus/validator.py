"""A validator's own verdict: recompute each window's probability with its own predictor
and check the proposed verdict against it (same risk band, probability within epsilon)."""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import numpy as np

from pipelines.consensus.crypto import digest_arrays
from pipelines.consensus.messages import Request, Verdict

log = logging.getLogger("aura.consensus")


@dataclass(frozen=True)
class RiskBands:
    """Probability cut points and band names: names[i] covers [cuts[i-1], cuts[i])."""

    cuts: tuple[float, ...] = (0.3, 0.7)
    names: tuple[str, ...] = ("low", "elevated", "high")

    def __post_init__(self):
        if len(self.names) != len(self.cuts) + 1 or list(self.cuts) != sorted(self.cuts):
            raise ValueError(f"risk bands need sorted cuts and one more name: {self.cuts}, {self.names}")
        if not all(0.0 < c < 1.0 for c in self.cuts):
            raise ValueError(f"risk band cuts must lie in (0, 1), got {self.cuts}")

    def band(self, p: float) -> str:
        return self.names[bisect.bisect_right(self.cuts, p)]


@dataclass(frozen=True)
class Opinion:
    """What a validator computed for a request and whether it agrees with the proposal."""

    agree: bool
    probability: float
    band: str
    digest_ok: bool


def agrees(proposed: Verdict, probability: float, band: str, epsilon: float) -> bool:
    return proposed.band == band and abs(proposed.probability - probability) <= epsilon


class Validator:
    """Recomputes verdicts with its own predictor (any ``ModelHandler``: ONNX, Triton, ...)."""

    def __init__(self, predictor, bands: RiskBands = RiskBands(), epsilon: float = 1e-4):
        self.predictor, self.bands, self.epsilon = predictor, bands, epsilon

    def assess(self, requests: list[Request]) -> dict[str, Opinion]:
        """One batched inference for all requests."""
        if not requests:
            return {}
        x = np.stack([np.asarray(r.x, dtype=np.float32) for r in requests])
        dt = np.stack([np.asarray(r.dt, dtype=np.float32) for r in requests])
        try:
            probs = np.asarray(self.predictor.run_inference(x, dt), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - a validator whose model fails is one of the f faults
            log.warning("validator abstains on %d request(s): its predictor failed: %s", len(requests), err)
            return {}  # it never votes for what it could not check; the others still reach a quorum
        out = {}
        for r, p in zip(requests, probs):
            p = float(p)
            band = self.bands.band(p)
            ok = digest_arrays(r.x, r.dt) == r.verdict.digest
            out[r.vid] = Opinion(ok and agrees(r.verdict, p, band, self.epsilon), p, band, ok)
        return out

    def check(self, verdict: Verdict, opinion: Opinion | None) -> bool:
        """Does a verdict in a proposed block agree with this validator's own result?"""
        return (opinion is not None and opinion.digest_ok
                and agrees(verdict, opinion.probability, opinion.band, self.epsilon))
