"""Which failure mechanism an alert most likely is: a small heuristic over one window's
features, judged against the tenant's own healthy baseline.

The baseline is an exponentially weighted mean (``ALPHA``) of a few fleet-level features over
the tenant's healthy, low-risk windows while no alert is open (fleets differ: a call graph's
calls per request or its usual latency are properties of the fleet, not of a failure). The
first matching rule wins:

1. ``retry_storm``: calls per request (``retry_ratio``) at least ``RETRY_RISE`` x the baseline,
   or the request volume (``requests_log``) at least ``LOAD_RISE`` x the baseline - retries
   amplify calls, and a load surge is what tips a fleet into a metastable retry storm.
2. ``load_redistribution``: agents gone - ``reporting_frac`` or the number of agents at least
   ``LOSS`` below the baseline: their load moves onto the survivors.
3. ``failing_dependency``: failed calls (``edge_error_share``) or the 90th percentile of the
   agents' error rates at least ``ERRORS`` (no baseline needed: a healthy fleet has ~none).
4. ``timeout_propagation``: the fleet's median p99 latency (``latency_p99_log_p50``, log1p ms)
   at least ``SLOW`` above the baseline (x e^0.5 ~ 1.65) with the load flat: a slow dependency
   whose latency climbs up the call graph towards the timeouts.
5. ``unknown`` otherwise, or without features, or (rules 1, 2, 4) before ``MIN_WINDOWS``
   baseline windows.

On the simulator's fleets the first high verdicts come before errors, with latency climbing;
a load surge shows in ``requests_log`` (+10-20 %), a slowed dependency only in latency, and
killed replicas look like a slowed dependency from fleet-level features (rule 4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

RETRY_STORM, LOAD_REDISTRIBUTION, FAILING_DEPENDENCY, TIMEOUT_PROPAGATION, UNKNOWN = (
    "retry_storm", "load_redistribution", "failing_dependency", "timeout_propagation", "unknown")
MECHANISMS = (RETRY_STORM, LOAD_REDISTRIBUTION, FAILING_DEPENDENCY, TIMEOUT_PROPAGATION, UNKNOWN)

ALPHA = 0.05
MIN_WINDOWS = 3
RETRY_RISE = 1.15
LOAD_RISE = 1.10
LOSS = 0.05
ERRORS = 0.05
SLOW = 0.5
TRACKED = ("retry_ratio", "requests_log", "reporting_frac", "n_agents_log10", "latency_p99_log_p50")


@dataclass(frozen=True)
class Baseline:
    """EWMA of ``TRACKED`` features over the healthy windows seen so far."""

    n: int = 0
    mean: tuple[tuple[str, float], ...] = field(default=())

    def get(self, name: str) -> float | None:
        return dict(self.mean).get(name)

    def update(self, features: Mapping[str, float] | None) -> Baseline:
        if not features:
            return self
        old = dict(self.mean)
        new = {}
        for name in TRACKED:
            x = features.get(name)
            if x is None or not math.isfinite(x):
                if name in old:
                    new[name] = old[name]
                continue
            new[name] = x if name not in old else old[name] + ALPHA * (x - old[name])
        return Baseline(self.n + 1, tuple(sorted(new.items())))


def _above(features: Mapping[str, float], base: Baseline, name: str) -> float | None:
    x, b = features.get(name), base.get(name)
    return None if x is None or b is None else x - b


def classify(features: Mapping[str, float] | None, baseline: Baseline) -> str:
    """The mechanism label of a window (module doc)."""
    if not features:
        return UNKNOWN
    known = baseline.n >= MIN_WINDOWS
    if known:
        retry, base_retry = features.get("retry_ratio"), baseline.get("retry_ratio")
        load = _above(features, baseline, "requests_log")
        if (retry is not None and base_retry and retry >= RETRY_RISE * base_retry) or \
                (load is not None and load >= math.log(LOAD_RISE)):
            return RETRY_STORM
        reporting = _above(features, baseline, "reporting_frac")
        agents = _above(features, baseline, "n_agents_log10")
        if (reporting is not None and reporting <= -LOSS) or \
                (agents is not None and agents <= math.log10(1.0 - LOSS)):
            return LOAD_REDISTRIBUTION
    if max(features.get("edge_error_share", 0.0), features.get("error_rate_p90", 0.0)) >= ERRORS:
        return FAILING_DEPENDENCY
    slow = _above(features, baseline, "latency_p99_log_p50")
    if known and slow is not None and slow >= SLOW:
        return TIMEOUT_PROPAGATION
    return UNKNOWN
