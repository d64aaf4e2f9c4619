"""When the fleet actually broke, from the load generator's own per-second outcomes, and
the labels file (``schemas/labels.v1.json``) that says so.

A second is *bad* when its entry failure fraction exceeds ``threshold``: of the entry
requests whose outcome the load generator learned in that second, the fraction that
failed, timed out or were shed (``pipelines.testbed.load``). A second without outcomes
(every request still hanging, or no load) keeps the state of the second before it, so a
silent second neither ends a break nor starts one. A *break* is a run of at
least ``sustain`` consecutive bad seconds. Each trigger owns the episode from its time
(rounded up to a whole second of the run) to the next trigger's (or the run's end):

- the trigger's **onset** is the start of the first break that begins inside its episode;
- the cascade's **end** is the end of the stretch of bad seconds holding the episode's last
  bad second (so a cascade still going when the next trigger comes runs on);
- a trigger whose episode holds no break **fizzled** (``during_break`` when it came while
  an earlier break was still going: the fleet was already down, nothing left to break).

Breaks that begin before the first trigger (a fleet that breaks on its own) are no
trigger's cascade; they are reported as ``breaks_without_trigger``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipelines.testbed.spec import Trigger


def bad_seconds(fractions: Sequence[float | None], threshold: float) -> list[bool]:
    out, prev = [], False
    for f in fractions:
        prev = prev if f is None else f > threshold
        out.append(prev)
    return out


def breaks(fractions: Sequence[float | None], threshold: float, sustain: int) -> list[tuple[int, int]]:
    """Maximal runs of at least ``sustain`` bad seconds, as (first, last) second indices."""
    out, start = [], None
    bad = bad_seconds(fractions, threshold)
    for i, b in enumerate([*bad, False]):
        if b and start is None:
            start = i
        elif not b and start is not None:
            if i - start >= sustain:
                out.append((start, i - 1))
            start = None
    return out


def episodes(fractions: Sequence[float | None], trigger_s: Sequence[float], threshold: float,
             sustain: int) -> list[dict]:
    """Per trigger (in the order given): ``onset`` and ``end`` second indices (``end`` is
    exclusive) or None for a fizzle, and the episode's peak failure fraction."""
    n = len(fractions)
    bad = bad_seconds(fractions, threshold)
    runs = breaks(fractions, threshold, sustain)
    order = sorted(range(len(trigger_s)), key=lambda k: trigger_s[k])
    out: list[dict] = [{} for _ in trigger_s]
    for pos, k in enumerate(order):
        lo = min(n, math.ceil(trigger_s[k]))
        hi = min(n, math.ceil(trigger_s[order[pos + 1]])) if pos + 1 < len(order) else n
        peak = max((f for f in fractions[lo:hi] if f is not None), default=None)
        run = next(((a, b) for a, b in runs if lo <= a < hi), None)
        if run is None:
            during = any(a < lo <= b for a, b in runs)
            out[k] = {"onset": None, "end": None, "peak_fail_frac": peak, "during_break": during}
            continue
        last = max(i for i in range(run[0], hi) if bad[i])
        while last + 1 < n and bad[last + 1]:  # the bad stretch holding it, to its end
            last += 1
        out[k] = {"onset": run[0], "end": last + 1, "peak_fail_frac": peak}
    return out


def labels_document(fractions: Sequence[float | None], triggers: Sequence[Trigger], *, tenant: str,
                    start: float, duration_s: float, threshold: float, sustain: int,
                    extra: dict | None = None) -> dict:
    """One scenario document of the labels file for one run that started at epoch
    ``start``; the seconds in ``fractions`` start there too."""
    end = start + duration_s
    eps = episodes(fractions, [t.at_s for t in triggers], threshold, sustain)
    cascades, fizzles = [], []
    for trig, ep in zip(triggers, eps):
        base = {"trigger_time": round(start + trig.at_s, 3), "mechanism": trig.mechanism,
                "trigger": trig.to_dict(), "peak_fail_frac": ep["peak_fail_frac"]}
        if ep["onset"] is None:
            fizzles.append({**base, "during_break": ep["during_break"]})
        else:
            cascades.append({**base, "onset": round(start + ep["onset"], 3),
                             "end": round(min(end, start + ep["end"]), 3)})
    first = min((t.at_s for t in triggers), default=math.inf)
    unprompted = [{"onset": round(start + a, 3), "end": round(min(end, start + b + 1), 3)}
                  for a, b in breaks(fractions, threshold, sustain) if a < first]
    return {
        "schema": "aura.labels/v1", "tenant": tenant, "start": round(start, 3), "end": round(end, 3),
        **(extra or {}), "onset_threshold": threshold, "onset_sustain_s": sustain,
        "cascades": cascades, "fizzles": fizzles, "breaks_without_trigger": unprompted,
    }
