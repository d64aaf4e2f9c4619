"""Scoring alarms against labelled cascade onsets (pure numpy; no engine, no model).

Definitions (one scenario = one tenant's fleet over its recorded time):

- A window is *positive* when a cascade onset falls within ``horizon_s`` after its end (the
  training label); a window ending inside an ongoing cascade is *in cascade* and left out of
  the window-level metrics, as in training.
- An *alarm* is a window whose score is at or above the threshold. Every alarmed window is
  exactly one of: *true* (a positive window), *late* (in cascade: the onset has passed) or
  *false* (neither). False alarms are counted as episodes (runs of consecutive false alarm
  windows: one page), per hour of fleet time.
- An onset is *warned* when an alarm (not in cascade) fires in the horizon before it; its
  lead time is onset minus the end of the first such window. An onset with only alarms
  after it is *late*, else *missed*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score


@dataclass
class ScenarioWindows:
    """One scenario's windows, in time order, with its labels (epoch seconds)."""

    tenant: str
    family: str  # e.g. "in_distribution" | "out_of_distribution"
    n_agents: int
    graph: str
    window_end: np.ndarray  # (W,)
    features: np.ndarray  # (W, F)
    onsets: np.ndarray  # (K,) cascade onsets
    cascade_ends: np.ndarray  # (K,)
    triggers: np.ndarray  # every trigger time (cascades and fizzles)
    duration_s: float  # fleet time covered
    horizon_s: float
    label: np.ndarray = field(init=False)
    in_cascade: np.ndarray = field(init=False)

    def __post_init__(self):
        self.label, self.in_cascade = window_labels(self.window_end, self.onsets, self.cascade_ends,
                                                    self.horizon_s)


def window_labels(ends: np.ndarray, onsets: np.ndarray, cascade_ends: np.ndarray, horizon_s: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(positive, in cascade) per window, as ``pipelines.training_data`` labels them."""
    ends = np.asarray(ends, dtype=float)
    onsets = np.asarray(onsets, dtype=float)
    if len(onsets) == 0:
        return np.zeros(len(ends), dtype=np.int8), np.zeros(len(ends), dtype=bool)
    ahead = onsets[None, :] - ends[:, None]
    tto = np.where(ahead > 0, ahead, np.inf).min(axis=1)
    inside = (onsets[None, :] <= ends[:, None]) & (ends[:, None] <= np.asarray(cascade_ends)[None, :])
    return (tto <= horizon_s).astype(np.int8), inside.any(axis=1)


@dataclass
class Outcome:
    """What the alarms of one scenario did at one threshold."""

    n_windows: int  # windows outside cascades (scored)
    positives: int
    true_alarms: int
    false_alarms: int  # windows
    false_episodes: int
    late_alarms: int  # windows
    onsets: int
    warned: int
    late_only: int
    missed: int
    lead_times: list[float]
    fleet_hours: float

    @property
    def alarms(self) -> int:
        return self.true_alarms + self.false_alarms + self.late_alarms


def outcome(s: ScenarioWindows, score: np.ndarray, threshold: float) -> Outcome:
    """Alarms of one scenario at ``threshold``, classified (see the module docstring)."""
    alarm = np.asarray(score) >= threshold
    scored = ~s.in_cascade
    pos = s.label.astype(bool) & scored
    true = alarm & pos
    false = alarm & scored & ~pos
    late = alarm & s.in_cascade
    starts = false & ~np.concatenate([[False], false[:-1]])
    early_ok = alarm & scored
    leads, late_only, missed = [], 0, 0
    for onset, end in zip(s.onsets, s.cascade_ends):
        before = early_ok & (s.window_end >= onset - s.horizon_s) & (s.window_end < onset)
        if before.any():
            leads.append(float(onset - s.window_end[np.argmax(before)]))
        elif (alarm & (s.window_end >= onset) & (s.window_end <= end)).any():
            late_only += 1
        else:
            missed += 1
    return Outcome(int(scored.sum()), int(pos.sum()), int(true.sum()), int(false.sum()), int(starts.sum()),
                   int(late.sum()), len(s.onsets), len(leads), late_only, missed, leads,
                   s.duration_s / 3600.0)


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def pr_auc(scenarios: list[ScenarioWindows], scores: list[np.ndarray]) -> float | None:
    """Average precision over the scored (not in-cascade) windows, pooled; None without
    both classes."""
    y = np.concatenate([s.label[~s.in_cascade] for s in scenarios]) if scenarios else np.zeros(0)
    p = np.concatenate([sc[~s.in_cascade] for s, sc in zip(scenarios, scores)]) if scenarios else np.zeros(0)
    if len(y) == 0 or y.min() == y.max():
        return None
    return float(average_precision_score(y, p))


def summarise(outcomes: list[Outcome]) -> dict:
    """Pooled metrics of a list of per-scenario outcomes (at one threshold)."""
    tp = sum(o.true_alarms for o in outcomes)
    fp = sum(o.false_alarms for o in outcomes)
    pos = sum(o.positives for o in outcomes)
    hours = sum(o.fleet_hours for o in outcomes)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, pos)
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (
        0.0 if precision is not None and recall is not None else None)
    leads = [x for o in outcomes for x in o.lead_times]
    onsets = sum(o.onsets for o in outcomes)
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "windows": sum(o.n_windows for o in outcomes), "positive_windows": pos,
        "alarm_windows": sum(o.alarms for o in outcomes), "true_alarm_windows": tp, "false_alarm_windows": fp,
        "late_alarm_windows": sum(o.late_alarms for o in outcomes),
        "false_alarms": sum(o.false_episodes for o in outcomes), "fleet_hours": hours,
        "false_alarms_per_fleet_hour": _ratio(sum(o.false_episodes for o in outcomes), hours),
        "onsets": onsets, "onsets_warned": sum(o.warned for o in outcomes),
        "onsets_late_only": sum(o.late_only for o in outcomes),
        "onsets_missed": sum(o.missed for o in outcomes),
        "event_recall": _ratio(sum(o.warned for o in outcomes), onsets),
        "lead_time_s": {"median": float(np.median(leads)) if leads else None,
                        "p25": float(np.percentile(leads, 25)) if leads else None,
                        "p75": float(np.percentile(leads, 75)) if leads else None,
                        "values": sorted(leads)},
    }


def false_alarm_rate(scenarios: list[ScenarioWindows], scores: list[np.ndarray], threshold: float) -> float:
    outs = [outcome(s, sc, threshold) for s, sc in zip(scenarios, scores)]
    hours = sum(o.fleet_hours for o in outs)
    return sum(o.false_episodes for o in outs) / hours if hours > 0 else 0.0


def _candidates(scores: list[np.ndarray], n: int = 400) -> np.ndarray:
    allv = np.unique(np.concatenate(scores)) if scores else np.zeros(1)
    if len(allv) > n:
        allv = np.unique(np.quantile(allv, np.linspace(0, 1, n)))
    return np.concatenate([allv, [np.nextafter(allv[-1], np.inf)]])


def threshold_for_budget(scenarios: list[ScenarioWindows], scores: list[np.ndarray],
                         per_hour: float = 1.0) -> float:
    """The lowest threshold at which these scenarios raise at most ``per_hour`` false alarms
    per fleet-hour (above the top score no alarm fires at all)."""
    cands = _candidates(scores)
    for t in cands:
        if false_alarm_rate(scenarios, scores, float(t)) <= per_hour:
            return float(t)
    return float(cands[-1])


def threshold_for_f1(scenarios: list[ScenarioWindows], scores: list[np.ndarray]) -> float:
    """The threshold of the best window-level F1 on these scenarios."""
    y = np.concatenate([s.label[~s.in_cascade] for s in scenarios]).astype(bool)
    p = np.concatenate([sc[~s.in_cascade] for s, sc in zip(scenarios, scores)])
    best, best_t = -1.0, float(_candidates(scores)[-1])
    for t in _candidates(scores):
        a = p >= t
        tp = float((a & y).sum())
        f1 = 2 * tp / (a.sum() + y.sum()) if a.sum() + y.sum() else 0.0
        if f1 > best:
            best, best_t = f1, float(t)
    return best_t


def score_split(scenarios: list[ScenarioWindows], scores: list[np.ndarray], thresholds: dict[str, float]
                ) -> dict:
    """Pooled and per-scenario metrics of one method on one split, at frozen thresholds
    (``operating``: the alert budget; ``best_f1``)."""
    pooled = {name: summarise([outcome(s, sc, t) for s, sc in zip(scenarios, scores)])
              for name, t in thresholds.items()}
    per = {}
    for s, sc in zip(scenarios, scores):
        o = outcome(s, sc, thresholds["operating"])
        per[s.tenant] = {"family": s.family, "n_agents": s.n_agents, "graph": s.graph,
                         "pr_auc": pr_auc([s], [sc]), **{k: v for k, v in summarise([o]).items()
                                                        if k != "lead_time_s"},
                         "lead_times_s": o.lead_times}
    return {"pr_auc": pr_auc(scenarios, scores), "scenarios": len(scenarios),
            "at_threshold": pooled, "per_scenario": per}
