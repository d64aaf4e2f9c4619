"""Per-tenant calibration of the model's input: features relative to the tenant's own
quiet baseline, and a verdict status that says when the model should not be trusted.

A fleet's telemetry has a texture of its own (latency scale, request volume, how many
agents, how bursty): absolute feature values learned on one fleet mean little on another.
``Calibration`` turns each window's feature vector into deviations from the tenant's
baseline - the median of its first ``windows`` windows, scaled by their spread (never below
a floor learned in training, so a very steady baseline does not make every wobble huge) -
and keeps a few features whose absolute value means the same on any fleet (error rates,
unhealthy fraction). Until the baseline is complete the tenant is ``calibrating``; a window
whose model input lies far outside what training saw is ``out_of_distribution``.

Pure functions over plain data: the engines keep ``Baseline`` in the tenant's keyed state
(with the sequence history, ``pipelines.inference.history_step``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OK, CALIBRATING, OUT_OF_DISTRIBUTION = "ok", "calibrating", "out_of_distribution"
STATUSES = (OK, CALIBRATING, OUT_OF_DISTRIBUTION)


@dataclass
class Baseline:
    """The tenant's first windows (by start ms; a later pane replaces an earlier one) until
    there are enough, then their frozen centre and scale."""

    first: dict[int, np.ndarray] = field(default_factory=dict)
    center: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def frozen(self) -> bool:
        return self.center is not None


@dataclass(frozen=True)
class Calibration:
    """What the model's input is made of (stored in ``model.json``)."""

    windows: int  # windows that make a tenant's baseline
    names: tuple[str, ...]  # raw feature names, in order
    absolute: tuple[str, ...]  # features also kept as they are (same meaning on any fleet)
    floor: tuple[float, ...]  # minimum scale per raw feature
    input_low: tuple[float, ...] = ()  # training range of each model input (quantiles)
    input_high: tuple[float, ...] = ()
    ood_fraction: float = 0.25  # more inputs than this outside the range: out of distribution
    ood_margin: float = 1.0  # ... by more than this times the range's width

    @property
    def n_inputs(self) -> int:
        return len(self.names) + len(self.absolute)

    def input_names(self) -> list[str]:
        return [*(f"rel_{n}" for n in self.names), *self.absolute]

    def observe(self, base: Baseline, start_ms: int, vector: np.ndarray) -> Baseline:
        """The baseline after a window; it freezes when a window after ``windows`` others
        arrives (so the last baseline window's later panes still count)."""
        if base.frozen:
            return base
        first = dict(base.first)
        if start_ms not in first and len(first) >= self.windows:
            stack = np.stack([first[k] for k in sorted(first)])
            return Baseline({}, *self.center_scale(stack))
        first[start_ms] = np.asarray(vector, dtype=float)
        return Baseline(first)

    def center_scale(self, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Median and robust spread (1.4826 MAD, at least the floor) of baseline windows."""
        center = np.median(stack, axis=0)
        mad = 1.4826 * np.median(np.abs(stack - center), axis=0)
        return center, np.maximum(mad, np.asarray(self.floor))

    def transform(self, x: np.ndarray, base: Baseline) -> np.ndarray:
        """(..., F) raw features -> (..., n_inputs) model input, with the frozen baseline or,
        while calibrating, the windows collected so far."""
        if base.frozen:
            center, scale = base.center, base.scale
        elif base.first:
            center, scale = self.center_scale(np.stack([base.first[k] for k in sorted(base.first)]))
        else:
            center, scale = np.zeros(len(self.names)), np.asarray(self.floor)
        idx = [self.names.index(n) for n in self.absolute]
        return np.concatenate([(x - center) / scale, x[..., idx]], axis=-1).astype(np.float32)

    def status(self, base: Baseline, model_input: np.ndarray) -> str:
        """``calibrating`` until the baseline is frozen; ``out_of_distribution`` when the
        last window's input has too many values far outside the training range."""
        if not base.frozen:
            return CALIBRATING
        if not self.input_low:
            return OK
        lo, hi = np.asarray(self.input_low), np.asarray(self.input_high)
        width = np.maximum(hi - lo, 1e-6)
        v = model_input[-1] if model_input.ndim > 1 else model_input
        outside = (v < lo - self.ood_margin * width) | (v > hi + self.ood_margin * width)
        return OUT_OF_DISTRIBUTION if outside.mean() > self.ood_fraction else OK

    def to_dict(self) -> dict:
        return {"windows": self.windows, "names": list(self.names), "absolute": list(self.absolute),
                "floor": [float(f) for f in self.floor], "input_low": [float(v) for v in self.input_low],
                "input_high": [float(v) for v in self.input_high], "ood_fraction": self.ood_fraction,
                "ood_margin": self.ood_margin}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(int(d["windows"]), tuple(d["names"]), tuple(d["absolute"]), tuple(d["floor"]),
                   tuple(d.get("input_low", ())), tuple(d.get("input_high", ())),
                   float(d.get("ood_fraction", 0.25)), float(d.get("ood_margin", 1.0)))

    def replay(self, features: np.ndarray) -> tuple[list[Baseline], list[str]]:
        """A whole tenant's windows in order (training, backtests): the baseline in force
        after each window and each window's status, as the stream computes them."""
        base, bases, statuses = Baseline(), [], []
        for i, vec in enumerate(features):
            base = self.observe(base, i, vec)
            bases.append(base)
            statuses.append(self.status(base, self.transform(vec, base)))
        return bases, statuses
