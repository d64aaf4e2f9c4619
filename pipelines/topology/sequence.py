"""Per-tenant sequence step of the feature stage, as a pure function over plain state."""

from __future__ import annotations

import numpy as np

from pipelines.topology.features import FeatureExtractor, WindowFeatures
from pipelines.windowing import ms


def next_row(extractor: FeatureExtractor, recent: dict[int, WindowFeatures], wf: WindowFeatures,
             slide_s: float, keep: int = 8) -> tuple[np.ndarray, dict[int, WindowFeatures]]:
    """The full feature vector of ``wf`` given the tenant's recent windows (by start ms),
    and the updated recent windows (a later pane of a window replaces the earlier one)."""
    prev = recent.get(ms(wf.window_start) - ms(slide_s))
    vec = extractor.sequence(prev, wf)
    updated = dict(recent)
    updated[ms(wf.window_start)] = wf
    for start in sorted(updated)[:-keep]:
        del updated[start]
    return vec, updated


def fold(extractor: FeatureExtractor, windows: list[WindowFeatures], slide_s: float
         ) -> list[tuple[WindowFeatures, np.ndarray]]:
    """Batch: one tenant's windows in event-time order (panes in order), each with its vector."""
    recent: dict[int, WindowFeatures] = {}
    out = []
    for wf in sorted(windows, key=lambda w: (w.window_start, w.pane_index)):
        vec, recent = next_row(extractor, recent, wf, slide_s)
        out.append((wf, vec))
    return out
