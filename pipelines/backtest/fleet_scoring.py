"""Scoring alarms the way an on-call engineer counts them on a fleet: false alarms in quiet
time, and onsets warned between their trigger and the onset.

Definitions (one scenario = one tenant's recording; times are window ends, epoch s):

- *Quiet* windows end at or before the first trigger (every window of a run without one)
  and hold a trusted verdict (``trusted``; windows where the model abstains - still
  calibrating, out of distribution - are not quiet time it can be credited with).
  A *false alarm* is a run of consecutive alarmed quiet windows (one page); the rate is
  per hour of quiet fleet time (quiet windows x window size).
- An onset is *warned* when an alarm fires in a window that ends after its trigger and at
  least ``delivery_s`` before the onset (the time from a window's end to a delivered alert:
  export delay, the service's grace, close -> committed verdict); its lead time is the onset
  minus (that window's end + ``delivery_s``). An onset whose first alarm comes later is
  *late*; without any alarm up to the cascade's end it is *missed*.
- Alarms after a trigger that fizzled are neither: reported apart.

``pipelines.backtest.scoring`` keeps the window-level definitions (60 s horizon) that
PR-AUC is measured with; this module is the one the testbed's bar is stated in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.backtest.scoring import ScenarioWindows


@dataclass
class FleetOutcome:
    quiet_windows: int
    quiet_hours: float
    false_alarms: int  # episodes in quiet time
    onsets: int
    warned: int
    late: int
    missed: int
    leads_s: list[float]
    fizzle_alarm_windows: int  # alarmed windows after a trigger that fizzled


def fleet_outcome(s: ScenarioWindows, score: np.ndarray, threshold: float, window_s: float = 10.0,
                  delivery_s: float = 5.0, trusted: np.ndarray | None = None) -> FleetOutcome:
    alarm = np.asarray(score) >= threshold
    ends = s.window_end
    first_trigger = s.triggers.min() if len(s.triggers) else np.inf
    quiet = ends <= first_trigger
    if trusted is not None:
        quiet &= np.asarray(trusted, dtype=bool)
        alarm &= np.asarray(trusted, dtype=bool)
    fa = alarm & quiet
    episodes = int((fa & ~np.concatenate([[False], fa[:-1]])).sum())
    leads, late, missed = [], 0, 0
    cascade_triggers = []
    for onset, end in zip(s.onsets, s.cascade_ends):
        before = s.triggers[s.triggers <= onset]
        trig = before.max() if len(before) else onset
        cascade_triggers.append(trig)
        warn = alarm & (ends > trig) & (ends + delivery_s <= onset)
        if warn.any():
            leads.append(float(onset - ends[np.argmax(warn)] - delivery_s))
        elif (alarm & (ends > trig) & (ends <= end + window_s)).any():
            late += 1
        else:
            missed += 1
    fizzles = [t for t in s.triggers if all(abs(t - c) > 1e-6 for c in cascade_triggers)]
    fizzle_alarms = sum(int((alarm & (ends > t)).sum()) for t in fizzles)
    return FleetOutcome(int(quiet.sum()), float(quiet.sum()) * window_s / 3600.0, episodes, len(s.onsets),
                        len(leads), late, missed, leads, fizzle_alarms)


def summarise_fleet(outs: list[FleetOutcome]) -> dict:
    hours = sum(o.quiet_hours for o in outs)
    onsets = sum(o.onsets for o in outs)
    leads = sorted(x for o in outs for x in o.leads_s)
    fas = sum(o.false_alarms for o in outs)
    return {"quiet_hours": round(hours, 3), "false_alarms": fas,
            "false_alarms_per_quiet_hour": fas / hours if hours > 0 else None,
            "onsets": onsets, "warned": sum(o.warned for o in outs), "late": sum(o.late for o in outs),
            "missed": sum(o.missed for o in outs), "warned_fraction": sum(o.warned for o in outs) / onsets
            if onsets else None,
            "median_lead_s": float(np.median(leads)) if leads else None,
            "leads_s": [round(x, 1) for x in leads],
            "fizzle_alarm_windows": sum(o.fizzle_alarm_windows for o in outs)}


def score_fleets(scenarios: list[ScenarioWindows], scores: list[np.ndarray], threshold: float,
                 window_s: float = 10.0, delivery_s: float = 5.0,
                 trusted: list[np.ndarray] | None = None) -> dict:
    return summarise_fleet([fleet_outcome(s, sc, threshold, window_s, delivery_s,
                                          None if trusted is None else trusted[i])
                            for i, (s, sc) in enumerate(zip(scenarios, scores))])


def threshold_for_quiet_budget(scenarios: list[ScenarioWindows], scores: list[np.ndarray],
                               per_hour: float = 1.0, window_s: float = 10.0, candidates: int = 400,
                               trusted: list[np.ndarray] | None = None) -> float:
    """The lowest threshold (of at most ``candidates`` score quantiles) at which these
    scenarios raise at most ``per_hour`` false alarms per quiet fleet-hour (just above the
    top score if none does)."""
    allv = np.unique(np.concatenate(scores)) if scores else np.zeros(1)
    if len(allv) > candidates:
        allv = np.unique(np.quantile(allv, np.linspace(0, 1, candidates)))
    top = float(np.nextafter(allv[-1], np.inf))
    for t in [*allv, top]:
        outs = [fleet_outcome(s, sc, float(t), window_s, trusted=None if trusted is None else trusted[i])
                for i, (s, sc) in enumerate(zip(scenarios, scores))]
        hours = sum(o.quiet_hours for o in outs)
        if hours <= 0 or sum(o.false_alarms for o in outs) / hours <= per_hour:
            return float(t)
    return top
