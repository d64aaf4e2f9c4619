"""What happened to a scenario's cascade, in plain words: the demo's closing story.

The scenario is run again twice from its seed in simulated time (``closed_loop.run_arm``):
once with no action and once with AURA's certified verdicts driving the incident workflow
into the simulated fleet, with the risk-band cuts the closed-loop backtest froze on its
validation scenarios (``models/<model>/playbook.json``; the defaults below without it).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np

from pipelines.backtest.closed_loop import AURA, LOOP_PLAYBOOK, NONE, ArmPlan, ArmRun, LoopConfig, run_arm
from pipelines.inference import DEFAULT_MODEL_DIR
from pipelines.simulation.scenario import ScenarioConfig

PLAYBOOK_FILE = "playbook.json"
DEFAULT_CUTS = (0.5, 0.8)


def frozen_playbook(model_dir: str = DEFAULT_MODEL_DIR) -> tuple[dict, str]:
    """The ``Playbook`` parameters frozen beside the model (the risk-band cuts and the
    playbook variant the closed loop chose on validation, over the loop's pace), and where
    they came from."""
    path = os.path.join(model_dir, PLAYBOOK_FILE)
    params = dict(LOOP_PLAYBOOK)
    if not os.path.exists(path):
        return {**params, "elevated": DEFAULT_CUTS[0], "high": DEFAULT_CUTS[1]}, \
            "defaults (no playbook.json beside the model)"
    with open(path) as f:
        doc = json.load(f)
    params.update(doc.get("playbook", {}))
    params.update(elevated=float(doc["elevated"]), high=float(doc["high"]))
    return params, f"{path} (fitted on validation: {doc.get('fitted', '?')})"


def frozen_cuts(model_dir: str = DEFAULT_MODEL_DIR) -> tuple[tuple[float, float], str]:
    """(elevated, high) cuts for the AURA arm and where they came from."""
    params, source = frozen_playbook(model_dir)
    return (params["elevated"], params["high"]), source


def _stretch(run: ArmRun, lo: float, hi: float) -> tuple[int, float]:
    """(peak unhealthy agents, requests lost as a share of offered) over [lo, hi) seconds."""
    a, b = int(max(lo, 0)), int(min(hi, len(run.unhealthy)))
    offered = float(run.offered[a:b].sum())
    return int(run.unhealthy[a:b].max(initial=0)), (float(run.lost[a:b].sum()) / offered if offered else 0.0)


def _first_warning(run: ArmRun, after_s: float, elevated: float) -> int | None:
    ok = np.array([s == "ok" for s in run.status])
    hit = np.flatnonzero(ok & (run.risk >= elevated) & (run.window_end_s > after_s))
    return int(hit[0]) if len(hit) else None


def _describe(a: dict) -> str:
    kind = a["kind"].replace("_", " ")
    if a["kind"] == "rollback":
        return "roll back an earlier action"
    size = {"shed_load": f" {100 * a['magnitude']:.0f} %", "retry_budget": f" of {a['magnitude']:g} retries",
            "scale_out": f" by {a['magnitude']:g}"}.get(a["kind"], "")
    return f"{kind}{size} on {', '.join(a['targets'][:3])}{' ...' if len(a['targets']) > 3 else ''}"


def tell(sc: ScenarioConfig, model_dir: str = DEFAULT_MODEL_DIR, loop: LoopConfig | None = None) -> str:
    """The story of the first cascade of ``sc`` without action, and of the same stretch with
    AURA acting. A scenario without a cascade gets a one-line story."""
    params, source = frozen_playbook(model_dir)
    cuts = (params.pop("elevated"), params.pop("high"))
    loop = replace(loop or LoopConfig(out=""), model_dir=model_dir)
    none = run_arm(sc, ArmPlan(NONE), loop)
    ep = next((e for e in none.episodes if e["cascade"]), None)
    if ep is None:
        return "No cascade in this scenario without action: nothing to prevent."
    aura = run_arm(sc, ArmPlan(AURA, *cuts, playbook=tuple(params.items())), loop)
    lo, hi = ep["trigger_time"], ep["end"] + 60.0
    lines = [f"What happened to the cascade (the scenario run again from its seed, with and without AURA "
             f"acting; risk bands from {source}):",
             f"  a {ep['mechanism'].replace('_', ' ')} trigger began at +{lo:.0f} s; without action the "
             f"cascade began at +{ep['onset']:.0f} s and lasted until +{ep['end']:.0f} s."]
    w = _first_warning(aura, lo, cuts[0])
    if w is None or aura.window_end_s[w] > ep["onset"] + 60:
        lines.append("  AURA did not warn before the cascade began.")
    else:
        end = aura.window_end_s[w]
        when = f"{ep['onset'] - end:.0f} s before the onset" if end <= ep["onset"] else \
            f"{end - ep['onset']:.0f} s after the onset"
        lines.append(f"  AURA first warned on the window closing at +{end:.0f} s (risk {aura.risk[w]:.2f}, "
                     f"certified by the validators), {when}.")
    acts = [a for a in aura.actions if lo <= a["start_s"] <= hi]
    pointed = []
    for a in acts:
        if a["kind"] in ("shed_load", "rollback"):  # entry agents and earlier actions, not the ranking
            continue
        for t in a["targets"]:
            if t not in pointed:
                pointed.append(t)
    if pointed:
        lines.append(f"  It pointed at: {', '.join(pointed[:6])}{' ...' if len(pointed) > 6 else ''}.")
    if acts:
        lines.append("  The workflow did:")
        lines += [f"    +{a['start_s']:.0f} s  {_describe(a)}" for a in acts[:12]]
    else:
        lines.append("  The workflow took no action in that stretch.")
    peak_n, lost_n = _stretch(none, lo, hi)
    peak_a, lost_a = _stretch(aura, lo, hi)
    same = next((e for e in aura.episodes if abs(e["trigger_time"] - lo) < 1.0), None)
    outcome = "the cascade still happened" if same and same["cascade"] else "no cascade"
    lines.append(f"  The same stretch (+{lo:.0f} s to +{hi:.0f} s): without action, up to {peak_n} of "
                 f"{sc.n_agents} agents unhealthy and {100 * lost_n:.1f} % of requests lost; with AURA "
                 f"acting, {outcome}, up to {peak_a} unhealthy and {100 * lost_a:.1f} % lost.")
    return "\n".join(lines)
