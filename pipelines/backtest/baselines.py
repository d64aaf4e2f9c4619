"""The methods a backtest compares, each scored on exactly the same windows.

Each is a small class with explicit parameters: ``fit`` on training scenarios' windows
(those outside cascades), ``score`` one scenario's windows in time order (higher = more
alarming). Thresholds are not theirs to choose: the backtest picks them on the validation
split (``scoring.threshold_for_budget``) and freezes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression

from pipelines.backtest.scoring import ScenarioWindows
from pipelines.topology.classic import CLASSIC_NAMES
from pipelines.topology.features import FeatureExtractor

NAMES = FeatureExtractor.names()
# the features without any persistent-homology input: classic statistics plus the change
# of the early-warning statistics since the previous window
NON_TOPOLOGY = [*CLASSIC_NAMES, "has_previous", "d_ews_latency_var", "d_ews_latency_ac1"]
assert set(NON_TOPOLOGY) <= set(NAMES)


def columns(names: list[str]) -> np.ndarray:
    return np.array([NAMES.index(n) for n in names])


def _training_rows(train: list[ScenarioWindows], cols: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([s.features[~s.in_cascade] for s in train])
    y = np.concatenate([s.label[~s.in_cascade] for s in train])
    return (x if cols is None else x[:, cols]), y


@dataclass
class StaticThresholdRule:
    """Prometheus-style alerts: fleet error rate or p99 latency over a threshold for a
    duration (``for_windows`` consecutive windows). One knob scales both thresholds: the
    score is min over the last ``for_windows`` windows of max(error / error_ref,
    p99 / p99_ref), the references being a high quantile of healthy training windows."""

    error_feature: str = "error_rate_p90"  # 90th percentile of the agents' error rates
    latency_feature: str = "latency_p99_log_p90"  # log1p(p99 ms), 90th percentile of agents
    for_windows: int = 2  # "for: 20s" with 10 s windows
    reference_quantile: float = 0.99
    name: str = "static_threshold"
    refs: tuple[float, float] = field(default=(1.0, 1.0), init=False)

    def fit(self, train: list[ScenarioWindows]) -> StaticThresholdRule:
        x, y = _training_rows(train, columns([self.error_feature, self.latency_feature]))
        healthy = x[y == 0] if (y == 0).any() else x
        err = float(np.quantile(healthy[:, 0], self.reference_quantile))
        lat = float(np.quantile(np.expm1(healthy[:, 1]), self.reference_quantile))
        self.refs = (max(err, 1e-6), max(lat, 1e-6))
        return self

    def levels(self, features: np.ndarray) -> np.ndarray:
        """(W,) each window's level alone: max(error / error_ref, p99 / p99_ref)."""
        x = features[:, columns([self.error_feature, self.latency_feature])]
        return np.maximum(x[:, 0] / self.refs[0], np.expm1(x[:, 1]) / self.refs[1])

    def score(self, s: ScenarioWindows) -> np.ndarray:
        level = self.levels(s.features)
        k = self.for_windows
        padded = np.concatenate([np.zeros(k - 1), level])  # scores are >= 0: no alarm before the duration
        return sliding_window_view(padded, k).min(axis=1) if len(level) else level


def kendall_tau_trailing(x: np.ndarray, k: int) -> np.ndarray:
    """Kendall's tau-a of each window's trailing ``k`` values against time (0 while fewer
    than 3 values exist)."""
    n = len(x)
    out = np.zeros(n)
    if n == 0:
        return out
    padded = np.concatenate([np.full(k - 1, np.nan), x])
    w = sliding_window_view(padded, k)  # (n, k)
    i, j = np.triu_indices(k, 1)
    sign = np.sign(w[:, j] - w[:, i])
    valid = ~np.isnan(sign)
    pairs = valid.sum(axis=1)
    out = np.where(pairs >= 3, np.nansum(sign, axis=1) / np.maximum(pairs, 1), 0.0)
    return out


@dataclass
class EarlyWarningSignals:
    """Critical-slowing-down indicators (Scheffer et al. 2009): rising variance and lag-1
    autocorrelation of the fleet's latency and error series. Score: mean Kendall tau of the
    four indicators over the trailing ``window`` windows (their trend, Dakos et al. 2012)."""

    indicators: tuple[str, ...] = ("ews_latency_var", "ews_latency_ac1", "ews_error_var", "ews_error_ac1")
    window: int = 6
    name: str = "early_warning_signals"

    def fit(self, train: list[ScenarioWindows]) -> EarlyWarningSignals:
        return self  # nothing learned: the threshold on the trend is chosen on validation

    def score(self, s: ScenarioWindows) -> np.ndarray:
        x = s.features[:, columns(list(self.indicators))]
        return np.mean([kendall_tau_trailing(x[:, i], self.window) for i in range(x.shape[1])], axis=0)


@dataclass
class IsolationForestBaseline:
    """An IsolationForest (scikit-learn) on the classic features: anomaly score of a window."""

    n_estimators: int = 200
    seed: int = 0
    name: str = "isolation_forest"
    model: IsolationForest | None = field(default=None, init=False)

    def fit(self, train: list[ScenarioWindows]) -> IsolationForestBaseline:
        x, _ = _training_rows(train, columns(CLASSIC_NAMES))
        self.model = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(x)
        return self

    def score(self, s: ScenarioWindows) -> np.ndarray:
        return -self.model.score_samples(s.features[:, columns(CLASSIC_NAMES)])


@dataclass
class LogisticAllFeatures:
    """Ablation: a logistic regression on all 65 features of the window (standardised on the
    training windows), as ``models/train.py`` fits it."""

    c: float = 0.5
    name: str = "logistic_regression"
    mean: np.ndarray | None = field(default=None, init=False)
    std: np.ndarray | None = field(default=None, init=False)
    model: LogisticRegression | None = field(default=None, init=False)

    def fit(self, train: list[ScenarioWindows]) -> LogisticAllFeatures:
        x, y = _training_rows(train)
        self.mean, self.std = x.mean(axis=0), x.std(axis=0) + 1e-6
        self.model = LogisticRegression(max_iter=3000, C=self.c).fit((x - self.mean) / self.std, y)
        return self

    def score(self, s: ScenarioWindows) -> np.ndarray:
        return self.model.predict_proba((s.features - self.mean) / self.std)[:, 1]


class SequenceScorer:
    """Scores every window with an ONNX sequence model over the tenant's last T windows
    (the input ``history_step`` builds in the job), on ``cols`` of the features."""

    def __init__(self, predictor, cols: np.ndarray | None, name: str):
        self.predictor, self.cols, self.name = predictor, cols, name

    def fit(self, train: list[ScenarioWindows]) -> SequenceScorer:
        return self  # trained beforehand (``ablation.train_without_topology``)

    def score(self, s: ScenarioWindows) -> np.ndarray:
        """As the job scores: calibrated when the model is; 0 (no alarm) where the verdict
        would not be trusted (calibrating, out of distribution)."""
        from pipelines.inference import score_tenant

        if len(s.window_end) == 0:
            return np.zeros(0)
        feats = s.features if self.cols is None else s.features[:, self.cols]
        p, statuses = score_tenant(self.predictor, s.window_end, s.window_end, feats)
        return np.where(np.array(statuses) == "ok", p, 0.0)
