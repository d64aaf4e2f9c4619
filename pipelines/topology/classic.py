"""Classic per-window features, the inputs the baselines see too: health fractions,
error and latency quantiles, load growth, retry ratio and early-warning statistics
(variance and lag-1 autocorrelation, Scheffer et al. 2009)."""

from __future__ import annotations

import numpy as np

from pipelines.windowing import WindowSnapshot
from schemas.arrow import METRICS

CLASSIC_NAMES = [
    "n_agents_log10", "reporting_frac", "unhealthy_frac",
    "error_rate_p50", "error_rate_p90", "error_rate_max",
    "latency_p99_log_p50", "latency_p99_log_p90", "latency_p99_log_max",
    "requests_log", "load_growth", "retry_ratio", "edge_error_share",
    "ews_latency_var", "ews_latency_ac1", "ews_error_var", "ews_error_ac1",
]

_ERR = METRICS.index("error_rate")
_P99 = METRICS.index("latency_p99_ms")
_REQ = METRICS.index("request_count")


def _q(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if len(x) else 0.0


def fleet_series(snap: WindowSnapshot, bins: tuple[np.ndarray, int], columns: list[int]
                 ) -> np.ndarray:
    """(len(columns), bins) per-bin fleet sums of metrics, and in the last row the number
    of finite samples per bin (from the first column)."""
    col, n_bins = bins
    if len(snap.sample_agent) == 0:
        return np.zeros((len(columns) + 1, 0))
    out = np.zeros((len(columns) + 1, n_bins))
    for i, c in enumerate(columns):
        vals = snap.sample_values[:, c]
        ok = np.isfinite(vals)
        out[i] = np.bincount(col[ok], vals[ok], minlength=n_bins)
        if i == 0:
            out[-1] = np.bincount(col[ok], minlength=n_bins)
    return out


def variance_ac1(x: np.ndarray) -> tuple[float, float]:
    """Variance and lag-1 autocorrelation (0 when undefined)."""
    if len(x) < 3:
        return 0.0, 0.0
    var = float(np.var(x))
    d = x - x.mean()
    den = float((d * d).sum())
    ac1 = float((d[1:] * d[:-1]).sum() / den) if den > 1e-12 else 0.0
    return var, ac1


def classic_features(snap: WindowSnapshot, timeout_ms: float, bins: tuple[np.ndarray, int]) -> list[float]:
    n = len(snap.agents)
    seen = snap.n_samples > 0
    m = snap.metrics[seen] if n else np.zeros((0, len(METRICS)))
    err, p99 = m[:, _ERR], m[:, _P99]
    sick = (np.nan_to_num(err) >= 0.5) | (np.nan_to_num(p99) >= timeout_ms)
    requests = np.nan_to_num(m[:, _REQ])
    sums = fleet_series(snap, bins, [_P99, _ERR, _REQ])
    have = sums[-1] > 0
    load = sums[2]
    half = len(load) // 2
    first, second = load[:half].sum(), load[half:].sum() if half else 0.0
    callers = np.unique(snap.edge_src)
    caller_requests = np.nan_to_num(snap.metrics[callers, _REQ]).sum() if len(callers) else 0.0
    calls = float(snap.edge_count.sum())
    lat_var, lat_ac1 = variance_ac1(np.log1p(sums[0][have] / sums[-1][have]))
    err_var, err_ac1 = variance_ac1(sums[1][have] / sums[-1][have])
    return [
        float(np.log10(1 + n)),
        float(seen.mean()) if n else 0.0,
        float(sick.mean()) if len(sick) else 0.0,
        _q(err, 0.5), _q(err, 0.9), _q(err, 1.0),
        _q(np.log1p(p99), 0.5), _q(np.log1p(p99), 0.9), _q(np.log1p(p99), 1.0),
        float(np.log1p(requests.sum())),
        float((second - first) / max(first, 1.0)) if half else 0.0,
        calls / caller_requests if caller_requests > 0 else 0.0,
        float(snap.edge_errors.sum()) / calls if calls > 0 else 0.0,
        lat_var, lat_ac1, err_var, err_ac1,
    ]
