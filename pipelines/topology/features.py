"""The feature stage: WindowSnapshot -> fixed-length, versioned feature vector.

``FeatureExtractor.window`` is pure per window (topology + classic features, and the
diagrams the next window needs); ``FeatureExtractor.sequence`` adds what needs the
tenant's previous window: topology stability (Wasserstein distance between consecutive
diagrams) and the change of the early-warning statistics. Engines keep the previous
window in keyed state and call both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.topology.classic import CLASSIC_NAMES, classic_features
from pipelines.topology.diagram_features import summary, summary_names, top_bars, wasserstein
from pipelines.topology.filtrations import CoMovementCloud, StressFiltration, sample_bins
from pipelines.windowing import WindowSnapshot

STRESS_THRESHOLDS = np.array([0.25, 0.5, 0.75, 0.9, 1.0])
COMOVE_THRESHOLDS = np.array([0.1, 0.25, 0.5, 0.75, 1.0])
SEQUENCE_NAMES = ["has_previous", "stress_wasserstein_h0", "stress_wasserstein_h1",
                  "comove_wasserstein_h0", "comove_wasserstein_h1",
                  "d_ews_latency_var", "d_ews_latency_ac1"]


@dataclass
class WindowFeatures:
    """Per-window part of the features, plus what the next window of the tenant needs."""

    tenant: str
    window_start: float
    window_end: float
    pane_index: int
    values: np.ndarray  # WINDOW_NAMES order
    stress: tuple[np.ndarray, np.ndarray]  # top bars of H0, H1 (capped)
    comove: tuple[np.ndarray, np.ndarray]
    ews: tuple[float, float]  # latency variance, lag-1 autocorrelation


@dataclass(frozen=True)
class FeatureExtractor:
    """All parameters of the feature stage, explicit; no state between calls."""

    stress: StressFiltration = field(default_factory=StressFiltration)
    comove: CoMovementCloud = field(default_factory=CoMovementCloud)
    timeout_ms: float = 1000.0
    noise: float = 0.05  # bars shorter than this are noise
    stability_bars: int = 50  # most persistent bars kept for the Wasserstein distance
    bin_s: float = 1.0

    @staticmethod
    def window_names() -> list[str]:
        return [*summary_names("stress_h0", STRESS_THRESHOLDS),
                *summary_names("stress_h1", STRESS_THRESHOLDS),
                "stress_components_frac", "stress_edges_stressed_frac",
                *summary_names("comove_h0", COMOVE_THRESHOLDS),
                *summary_names("comove_h1", COMOVE_THRESHOLDS),
                "comove_points_log10", "comove_subsampled", "comove_mean_corr",
                *CLASSIC_NAMES]

    @classmethod
    def names(cls) -> list[str]:
        return [*cls.window_names(), *SEQUENCE_NAMES]

    def window(self, snap: WindowSnapshot) -> WindowFeatures:
        u, v, values = self.stress.edge_values(snap)
        st = self.stress.diagrams_of(len(snap.agents), u, v, values)
        bins = sample_bins(snap, self.bin_s)
        z = self.comove.standardized_series(snap, bins if self.comove.bin_s == self.bin_s else None)
        cm = self.comove.diagrams_of(z)
        n, m = max(st.n_points, 1), max(cm.n_points, 1)
        mean_corr = 0.0
        if len(z) > 1:
            s = z.sum(axis=0)
            mean_corr = float((s @ s - len(z)) / (len(z) * (len(z) - 1)))  # mean off-diagonal rho
        row = [*summary(st.h0, STRESS_THRESHOLDS, self.noise, n),
               *summary(st.h1, STRESS_THRESHOLDS, self.noise, n),
               float(np.isinf(st.h0[:, 1]).sum()) / n if len(st.h0) else 0.0,
               float((values < 0.5).mean()) if len(values) else 0.0,
               *summary(cm.h0, COMOVE_THRESHOLDS, self.noise, m),
               *summary(cm.h1, COMOVE_THRESHOLDS, self.noise, m),
               float(np.log10(1 + cm.n_points)), float(cm.subsampled), mean_corr,
               *classic_features(snap, self.timeout_ms, bins)]
        names = self.window_names()
        lat_var, lat_ac1 = row[names.index("ews_latency_var")], row[names.index("ews_latency_ac1")]
        k = self.stability_bars
        return WindowFeatures(
            snap.tenant, snap.window_start, snap.window_end, snap.pane_index,
            np.asarray(row, dtype=float),
            (top_bars(st.h0, k, 1.0), top_bars(st.h1, k, 1.0)),
            (top_bars(cm.h0, k, 2.0), top_bars(cm.h1, k, 2.0)),
            (lat_var, lat_ac1))

    def transform(self, snaps: list[WindowSnapshot]) -> np.ndarray:
        """(windows, features) for one tenant's snapshots, in event-time order."""
        from pipelines.topology.sequence import fold

        slide = min((b.window_start - a.window_start for a, b in zip(snaps, snaps[1:])
                     if b.window_start > a.window_start), default=0.0)
        rows = fold(self, [self.window(s) for s in snaps], slide)
        return np.array([vec for _, vec in rows]).reshape(len(rows), len(self.names()))

    def sequence(self, prev: WindowFeatures | None, cur: WindowFeatures) -> np.ndarray:
        """The full vector (``names()`` order): window part + change since ``prev``."""
        if prev is None:
            tail = [0.0] * len(SEQUENCE_NAMES)
        else:
            tail = [1.0,
                    wasserstein(prev.stress[0], cur.stress[0]), wasserstein(prev.stress[1], cur.stress[1]),
                    wasserstein(prev.comove[0], cur.comove[0]), wasserstein(prev.comove[1], cur.comove[1]),
                    cur.ews[0] - prev.ews[0], cur.ews[1] - prev.ews[1]]
        return np.concatenate([cur.values, tail])

