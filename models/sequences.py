"""Training sequences: the last T windows of a tenant (features and elapsed times)."""

from __future__ import annotations

import numpy as np

from pipelines.calibration import CALIBRATING, Calibration
from pipelines.inference import sequence_at
from pipelines.training_data import ScenarioWindows


def build_sequences(data: list[ScenarioWindows], t: int = 8, drop: float = 0.0, seed: int = 0,
                    calibration: Calibration | None = None, in_cascade: str = "skip"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, T, F) model inputs, (N, T) dt, (N,) labels, (N,) scenario index, for every window
    that does not end inside an ongoing cascade. ``drop``: chance that each earlier window
    is missing from a sequence (irregular history). With ``calibration`` the inputs are
    calibrated against each scenario's baseline as the stream does it, and windows of the
    calibration period (no verdict is trusted there) are left out. ``in_cascade``: windows
    inside a cascade are left out (``skip``), or they alone are built, as positives (``only``:
    the fleet is breaking now)."""
    rng = np.random.default_rng(seed)
    xs, dts, ys, groups = [], [], [], []
    for g, s in enumerate(data):
        bases, statuses = calibration.replay(s.features) if calibration else (None, None)
        for i in range(len(s.label)):
            calibrating = statuses is not None and statuses[i] == CALIBRATING
            if s.in_cascade[i] != (in_cascade == "only") or calibrating:
                continue
            idx = None
            if drop > 0:
                keep = rng.random(i + 1) >= drop
                keep[i] = True
                idx = np.flatnonzero(keep)
            x, dt = sequence_at(s.features, s.window_end, i, idx, t)
            if calibration is not None:
                x = calibration.transform(x, bases[i])
            xs.append(x)
            dts.append(dt)
            ys.append(1 if s.in_cascade[i] else s.label[i])
            groups.append(g)
    f = calibration.n_inputs if calibration else (data[0].features.shape[1] if data else 0)
    return (np.array(xs, dtype=np.float32).reshape(-1, t, f), np.array(dts, dtype=np.float32).reshape(-1, t),
            np.array(ys, dtype=np.float32), np.array(groups))
