"""Training sequences: the last T windows of a tenant (features and elapsed times)."""

from __future__ import annotations

import numpy as np

from pipelines.inference import sequence_at
from pipelines.training_data import ScenarioWindows


def build_sequences(data: list[ScenarioWindows], t: int = 8, drop: float = 0.0, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, T, F) features, (N, T) dt, (N,) labels, (N,) scenario index, for every window
    that does not end inside an ongoing cascade. ``drop``: chance that each earlier window
    is missing from a sequence (irregular history)."""
    rng = np.random.default_rng(seed)
    xs, dts, ys, groups = [], [], [], []
    for g, s in enumerate(data):
        for i in range(len(s.label)):
            if s.in_cascade[i]:
                continue
            idx = None
            if drop > 0:
                keep = rng.random(i + 1) >= drop
                keep[i] = True
                idx = np.flatnonzero(keep)
            x, dt = sequence_at(s.features, s.window_end, i, idx, t)
            xs.append(x)
            dts.append(dt)
            ys.append(s.label[i])
            groups.append(g)
    f = data[0].features.shape[1] if data else 0
    return (np.array(xs, dtype=np.float32).reshape(-1, t, f), np.array(dts, dtype=np.float32).reshape(-1, t),
            np.array(ys, dtype=np.float32), np.array(groups))
