"""The closed-loop backtest: does acting on AURA's warnings prevent cascades, and at what cost?

Each held-out scenario (one trigger episode on a simulated fleet) runs to its end in four
arms from the same seed, each a fresh fleet:

- ``none``: no action (the scenario's own operator still sheds load late, as in every arm);
- ``static``: the backtest's Prometheus-style static rule (fleet error rate or p99 over a
  threshold for two windows) drives the incident workflow and its playbook;
- ``aura``: the committed model's certified verdicts drive the same workflow and playbook;
- ``oracle``: a verdict of 1 from ``oracle_lead_s`` before each onset of the ``none`` arm to
  that cascade's end drives them (the ceiling of acting early).

The loop runs the pipeline's own stages (``loop_stages``) window by window in simulated time.
A verdict is available ``verdict_latency_s`` after its window closes (the measured window
close -> committed verdict p99 was 1.66 s), and the simulator's actuator applies an action
``actuation_delay_s`` after that: no arm acts on what it could not yet know. The risk-band
cuts of the static and AURA arms are frozen on the validation scenarios before any test
scenario runs: each arm's candidate cuts are the same quantiles of its own scores on the
validation windows that warn of nothing (no onset within 60 s, no cascade running), and the
closed loop on validation picks the pair that prevents the most cascades within the cost
budget (requests lost beyond the no-action arm on cascade-free stretches). Approvals are
automatic in the backtest (an operator who approves at once); the approval step itself is
exercised in the workflow's tests.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.backtest.baselines import StaticThresholdRule
from pipelines.backtest.loop_stages import WindowStages
from pipelines.backtest.scoring import ScenarioWindows
from pipelines.calibration import OK
from pipelines.incidents.actuator import Actuator, Delivery
from pipelines.incidents.interventions import ROLLBACK, Intervention
from pipelines.inference import DEFAULT_MODEL_DIR, OnnxPredictor
from pipelines.simulation.output import tick_table
from pipelines.simulation.scenario import MECHANISMS, Scenario, ScenarioConfig
from pipelines.topology.features import FeatureExtractor

NONE, STATIC, AURA, ORACLE = "none", "static", "aura", "oracle"
ARMS = (NONE, STATIC, AURA, ORACLE)
NAMES = FeatureExtractor.names()
# (elevated, high) risk-band cuts to try: quantiles of an arm's scores on validation windows
# that warn of nothing
CUT_GRID = ((0.9, 0.97), (0.95, 0.995), (0.97, 0.99), (0.97, 0.995), (0.99, 0.995), (0.995, 0.999))
# playbook variants tried with each pair of cuts: retries allowed under a retry budget, and
# how many windows in a row a warning must hold before an incident opens
PLAYBOOK_GRID = ((("retry_cap", 0), ("open_windows", 1)), (("retry_cap", 1), ("open_windows", 1)),
                 (("retry_cap", 0), ("open_windows", 2)))
# The playbook's pace in the backtest, chosen on the validation scenarios with the oracle arm:
# told each onset, the workflow's defaults (verify 3 windows, roll back what did not help,
# actions for 120 s) prevented 2 of 5 validation cascades (12 scenarios); verifying 6 windows
# with actions for 300 s 3 of 5; on 36 scenarios that pace prevented 12 of 19, and keeping
# what did not help while escalating (rolled back at close) 16 of 19 at less cost.
LOOP_PLAYBOOK = (("verify_windows", 6), ("close_windows", 6), ("action_ttl_s", 300.0),
                 ("breaker_ttl_s", 300.0), ("rollback_unhelpful", False))
MAX_EXCESS_LOST = 0.005  # requests lost on cascade-free stretches beyond the no-action arm


@dataclass(frozen=True)
class LoopConfig:
    """Everything that determines a closed-loop backtest run."""

    out: str
    model_dir: str = DEFAULT_MODEL_DIR
    val_scenarios: int = 36
    test_scenarios: int = 48
    agents: tuple[int, ...] = (60, 100)
    graphs: tuple[str, ...] = ("layered", "scale_free")
    duration_s: float = 900.0
    quiet_s: tuple[float, float] = (120.0, 200.0)  # the model calibrates on its first 6 windows
    window_s: float = 10.0
    verdict_latency_s: float = 2.0
    actuation_delay_s: float = 5.0
    oracle_lead_s: float = 60.0
    approve_above: float = 0.2
    cut_quantiles: tuple[tuple[float, float], ...] = CUT_GRID
    playbook_grid: tuple[tuple[tuple[str, float], ...], ...] = PLAYBOOK_GRID
    consensus: bool = True
    seed: int = 7000
    jobs: int = 2
    progress: bool = True
    plan_out: str | None = None  # write the AURA arm's frozen cuts here (the demo's story reads them)

    def validate(self) -> LoopConfig:
        if self.val_scenarios < 1 or self.test_scenarios < 1:
            raise ValueError("the closed loop needs at least one validation and one test scenario")
        if self.verdict_latency_s < 0 or self.actuation_delay_s < 0:
            raise ValueError("delays cannot be negative")
        if not self.cut_quantiles or any(not 0 < a <= b < 1 for a, b in self.cut_quantiles):
            raise ValueError("cut_quantiles: (elevated, high) pairs with 0 < elevated <= high < 1")
        if not self.playbook_grid:
            raise ValueError("playbook_grid: at least one playbook variant (may be empty: ())")
        return self


def loop_scenarios(cfg: LoopConfig, split: str) -> list[ScenarioConfig]:
    """One-episode scenarios: mechanisms in turn, severities spread over [0, 1] (about half
    cascade without action), seeds disjoint between the splits."""
    n = cfg.val_scenarios if split == "validation" else cfg.test_scenarios
    base = cfg.seed + (0 if split == "validation" else 100_000)
    rng = np.random.default_rng(base)
    sev = (np.arange(n) + rng.uniform(size=n)) / n
    rng.shuffle(sev)
    return [ScenarioConfig(n_agents=cfg.agents[i % len(cfg.agents)], duration_s=cfg.duration_s, seed=base + i,
                           graph=cfg.graphs[(i // len(MECHANISMS)) % len(cfg.graphs)],
                           tenant=f"{split[:3]}{i:03d}", mechanisms=(MECHANISMS[i % len(MECHANISMS)],),
                           severities=(float(sev[i]),), quiet_s=cfg.quiet_s, max_episodes=1)
            for i in range(n)]


# -- one arm of one scenario -------------------------------------------------------------------
@dataclass
class ArmRun:
    """What happened to one scenario in one arm (times: seconds since the scenario's start)."""

    tenant: str
    arm: str
    mechanism: str
    n_agents: int
    trigger_s: float
    cascade: bool
    onset_s: float | None
    cascade_end_s: float | None
    unhealthy: np.ndarray  # (ticks,) unhealthy agents (trigger roots excluded)
    offered: np.ndarray  # (ticks,) external requests
    lost: np.ndarray  # (ticks,) shed + failed
    window_end_s: np.ndarray  # (W,)
    risk: np.ndarray  # (W,) the arm's verdict (the model's in ``none``)
    static_level: np.ndarray  # (W,) the static rule's level
    status: list[str]
    features: np.ndarray  # (W, F)
    actions: list[dict] = field(default_factory=list)  # kind, start_s, id, rollback_of, targets
    episodes: list[dict] = field(default_factory=list)  # every episode's label (seconds since start)

    def windows(self, horizon_s: float = 60.0) -> ScenarioWindows:
        onsets = np.array([self.onset_s] if self.cascade else [])
        ends = np.array([self.cascade_end_s] if self.cascade else [])
        return ScenarioWindows(self.tenant, "in_distribution", self.n_agents, "", self.window_end_s,
                               self.features, onsets, ends, np.array([self.trigger_s]),
                               float(len(self.unhealthy)), horizon_s)


class _Recording(Actuator):
    """Passes interventions to the simulator's actuator and keeps them for the report."""

    name = "simulator"

    def __init__(self, inner: Actuator, start_epoch: float, delay_s: float):
        self.inner, self.start, self.delay = inner, start_epoch, delay_s
        self.log: list[dict] = []

    def act(self, iv: Intervention, now_s: float) -> Delivery:
        d = self.inner.act(iv, now_s)
        self.log.append({"id": iv.id, "kind": iv.kind, "targets": list(iv.targets), "magnitude": iv.magnitude,
                         "start_s": round(now_s - self.start + self.delay, 3), "rollback_of": iv.rollback_of,
                         "status": d.status})
        return d


@dataclass(frozen=True)
class ArmPlan:
    """How an arm turns a window into a verdict: its band cuts and, for the oracle, the
    ``none`` arm's cascade."""

    arm: str
    elevated: float = 0.5
    high: float = 0.5
    static_refs: tuple[float, float] = (1.0, 1.0)
    oracle_span: tuple[float, float] | None = None  # (from, to) seconds since start
    playbook: tuple[tuple[str, float], ...] = LOOP_PLAYBOOK  # Playbook parameters besides the cuts


_WORKER: dict = {}


def _predictors(model_dir: str, consensus: bool) -> tuple:
    key = (model_dir, consensus)
    if key not in _WORKER:
        preds = []
        for _ in range(5 if consensus else 1):
            p = OnnxPredictor(model_dir)
            p.load_model()
            preds.append(p)
        _WORKER[key] = (preds[0], preds[1:] or None)
    return _WORKER[key]


def _static_level(vec: np.ndarray, refs: tuple[float, float]) -> float:
    rule = StaticThresholdRule()
    rule.refs = refs
    return float(rule.levels(vec[None, :])[0])


def run_arm(sc_cfg: ScenarioConfig, plan: ArmPlan, cfg: LoopConfig) -> ArmRun:
    """One scenario in one arm, window by window; actions land in the simulated fleet."""
    from pipelines.incidents.playbook import Playbook
    from pipelines.incidents.sim_actuator import SimulatorActuator
    from pipelines.incidents.workflow import IncidentWorkflow, WindowObservation

    sc = Scenario(sc_cfg)
    start = sc_cfg.start_epoch_s
    predictor, validators = _predictors(cfg.model_dir, cfg.consensus and plan.arm == AURA)
    stages = WindowStages(FeatureExtractor(timeout_ms=sc.fleet.physics.timeout * 1e3), predictor, validators,
                          slide_s=cfg.window_s)
    actuator = _Recording(SimulatorActuator(sc, actuation_delay_s=cfg.actuation_delay_s), start,
                          cfg.actuation_delay_s)
    workflow = None
    if plan.arm != NONE:
        workflow = IncidentWorkflow(None, actuator, Playbook(elevated=plan.elevated, high=plan.high,
                                                                  **dict(plan.playbook)),
                                    approve_above=cfg.approve_above, approver=lambda iv: True)
    pending: deque = deque()
    buf: list[pa.Table] = []
    win_end = start + cfg.window_s
    ends, risks, levels, statuses, feats = [], [], [], [], []
    recent_levels: deque = deque(maxlen=2)
    for t, tel in sc.ticks():
        buf.append(tick_table(sc, t, tel))
        now = t + sc_cfg.tick_s
        if now >= win_end - 1e-9:
            v = stages.step(sc_cfg.tenant, win_end - cfg.window_s, win_end, pa.concat_tables(buf))
            buf = []
            recent_levels.append(_static_level(v.vector, plan.static_refs))
            level = min(recent_levels) if len(recent_levels) == recent_levels.maxlen else 0.0
            rel_end = win_end - start
            risk, cert, status = _arm_verdict(plan, v, level, rel_end)
            ends.append(rel_end)
            risks.append(risk)
            levels.append(level)
            statuses.append(v.status)
            feats.append(v.vector)
            if workflow is not None:
                pending.append(WindowObservation(
                    sc_cfg.tenant, int(round((win_end - cfg.window_s) * 1000)), int(round(win_end * 1000)),
                    risk, cert, status, dict(zip(NAMES, map(float, v.vector))), v.snapshot,
                    win_end + cfg.verdict_latency_s))
            win_end += cfg.window_s
        while pending and pending[0].at_s <= now + 1e-9:
            workflow.observe(pending.popleft())
    stages.close()
    lab = sc.labels[0] if sc.labels else None
    led = sc.ledger
    return ArmRun(sc_cfg.tenant, plan.arm, sc_cfg.mechanisms[0], sc_cfg.n_agents,
                  (lab.trigger_time - start) if lab else float("inf"), bool(lab and lab.cascade),
                  (lab.onset - start) if lab and lab.cascade else None,
                  (lab.end - start) if lab and lab.cascade else None,
                  np.asarray(sc.unhealthy_counts), np.asarray(led["offered"]),
                  np.asarray(led["shed"]) + np.asarray(led["failed"]), np.asarray(ends), np.asarray(risks),
                  np.asarray(levels), statuses, np.asarray(feats).reshape(len(ends), len(NAMES)),
                  actuator.log, [_relative(asdict(x), start) for x in sc.labels])


def _relative(label: dict, start: float) -> dict:
    """An episode label with its times as seconds since the scenario's start."""
    times = ("trigger_time", "trigger_end", "onset", "end")
    return {k: (v - start if k in times and v is not None else v) for k, v in label.items()
            if k != "root_agents"}


def _arm_verdict(plan: ArmPlan, v, level: float, rel_end: float) -> tuple[float, dict | str | None, str]:
    """(risk in [0, 1], certificate, status) of one window as the arm sees it. The static
    and oracle arms are not the model, so the validators cannot certify them: their
    certificate names the rule."""
    if plan.arm in (AURA, NONE):
        return v.probability, v.certificate, v.status
    if plan.arm == STATIC:
        return level / (1.0 + level), {"rule": "static_threshold"}, OK
    lo, hi = plan.oracle_span or (np.inf, -np.inf)
    return (1.0 if lo <= rel_end <= hi else 0.0), {"rule": "oracle"}, OK


# -- fitting on validation ---------------------------------------------------------------------
def static_refs(val_none: list[ArmRun], quantile: float = 0.99) -> tuple[float, float]:
    """The static rule's references, as ``StaticThresholdRule.fit`` takes them: a high
    quantile of healthy validation windows."""
    rule = StaticThresholdRule(reference_quantile=quantile).fit([r.windows() for r in val_none])
    return rule.refs


def static_levels(run: ArmRun, refs: tuple[float, float], for_windows: int = 2) -> np.ndarray:
    """The static rule's score of each window of a run at these references (as the arm
    computes it live: the minimum level over the last ``for_windows`` windows)."""
    rule = StaticThresholdRule(for_windows=for_windows)
    rule.refs = refs
    return rule.score(run.windows())


def negative_windows(run: ArmRun, horizon_s: float = 60.0) -> np.ndarray:
    """Windows that warn of nothing: no onset within ``horizon_s`` after, no cascade running."""
    w = run.windows(horizon_s)
    return (w.label == 0) & ~w.in_cascade


def candidate_cuts(scores: list[np.ndarray], masks: list[np.ndarray],
                   quantiles: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    """(elevated, high) cuts at the given quantiles of the scores on the masked windows
    (distinct pairs, in order)."""
    pool = np.concatenate([np.asarray(s)[m] for s, m in zip(scores, masks)])
    if len(pool) == 0:
        raise ValueError("no validation window to fit the risk bands on")
    out: list[tuple[float, float]] = []
    for qa, qb in quantiles:
        el, hi = (min(float(np.nextafter(np.quantile(pool, q), 1.0)), 1.0) for q in (qa, qb))
        pair = (el, hi)
        if pair not in out:
            out.append(pair)
    return out


def oracle_span(none: ArmRun, lead_s: float) -> tuple[float, float] | None:
    if not none.cascade:
        return None
    return none.onset_s - lead_s, none.cascade_end_s


# -- measures ----------------------------------------------------------------------------------
def stretches(none: ArmRun, tick_s: float = 1.0, after_s: float = 60.0) -> np.ndarray:
    """(ticks,) True on the cascade stretch of a scenario: from the trigger to the ``none``
    arm's cascade end (+ ``after_s``); all False when ``none`` had no cascade."""
    t = np.arange(len(none.unhealthy)) * tick_s
    if not none.cascade:
        return np.zeros(len(t), dtype=bool)
    return (t >= none.trigger_s) & (t <= none.cascade_end_s + after_s)


def cascade_agent_seconds(run: ArmRun, fraction: float = 0.1, tick_s: float = 1.0) -> float:
    u = run.unhealthy
    return float(u[u >= fraction * run.n_agents].sum() * tick_s)


def summarise(runs: dict[str, list[ArmRun]]) -> dict:
    """Per arm: cascades (of the ``none`` arm's) that still happened, prevented share per
    mechanism, cascade agent-seconds, requests lost on cascade and cascade-free stretches,
    actions taken and rolled back, time from trigger to first action."""
    none = runs[NONE]
    masks = [stretches(r) for r in none]
    base = np.array([r.cascade for r in none])
    out: dict = {"scenarios": len(none), "cascades_without_action": int(base.sum()),
                 "by_mechanism_without_action": _count_by(none, base)}
    for arm, rs in runs.items():
        happened = np.array([r.cascade for r in rs])
        kept = happened & base
        off_c = sum(r.offered[m].sum() for r, m in zip(rs, masks))
        off_f = sum(r.offered[~m].sum() for r, m in zip(rs, masks))
        lost_c = sum(r.lost[m].sum() for r, m in zip(rs, masks))
        lost_f = sum(r.lost[~m].sum() for r, m in zip(rs, masks))
        firsts = [min(a["start_s"] for a in r.actions) - r.trigger_s for r in rs if r.actions]
        prevented = int(base.sum() - kept.sum())
        out[arm] = {
            "cascades": int(happened.sum()),
            "cascades_of_no_action_arm": int(kept.sum()),
            "new_cascades": int((happened & ~base).sum()),
            "prevented": prevented,
            "prevented_share": prevented / base.sum() if base.any() else None,
            "prevented_by_mechanism": {m: _share(base, kept, [r.mechanism == m for r in rs])
                                       for m in MECHANISMS},
            "cascade_agent_seconds": float(sum(cascade_agent_seconds(r) for r in rs)),
            "lost_share_cascade": float(lost_c / off_c) if off_c else None,
            "lost_share_cascade_free": float(lost_f / off_f) if off_f else None,
            "excess_lost_share_cascade_free": None,
            "actions": int(sum(sum(a["kind"] != ROLLBACK for a in r.actions) for r in rs)),
            "rolled_back": int(sum(sum(a["kind"] == ROLLBACK for a in r.actions) for r in rs)),
            "actions_on_cascade_free_scenarios": int(sum(len(r.actions) for r, b in zip(rs, base) if not b)),
            "trigger_to_first_action_s_median": float(np.median(firsts)) if firsts else None,
        }
    base_lost = out[NONE]["lost_share_cascade_free"] if NONE in runs else None
    for arm in runs:
        if base_lost is not None and out[arm]["lost_share_cascade_free"] is not None:
            out[arm]["excess_lost_share_cascade_free"] = out[arm]["lost_share_cascade_free"] - base_lost
    return out


def _count_by(rs: list[ArmRun], mask: np.ndarray) -> dict[str, int]:
    return {m: int(sum(b for r, b in zip(rs, mask) if r.mechanism == m)) for m in MECHANISMS}


def _share(base: np.ndarray, kept: np.ndarray, sel: list[bool]) -> float | None:
    sel = np.asarray(sel)
    n = int((base & sel).sum())
    return None if n == 0 else float((n - (kept & sel).sum()) / n)


def objective(s: dict, arm: str, max_excess: float = MAX_EXCESS_LOST) -> float:
    """What the validation grid maximises: cascades prevented (less new ones), within a
    budget on the requests lost on cascade-free stretches beyond the no-action arm (over
    budget: ranked by that excess alone)."""
    excess = s[arm]["excess_lost_share_cascade_free"] or 0.0
    if excess > max_excess:
        return -excess
    return s[arm]["prevented"] - s[arm]["new_cascades"] - excess


def bootstrap(runs: dict[str, list[ArmRun]], resamples: int = 1000, level: float = 0.9,
              seed: int = 0) -> dict:
    """Percentile intervals over scenario resamples of each arm's prevented share and
    cascade-free loss, and of AURA's prevented count over the static arm's."""
    rng = np.random.default_rng(seed)
    n = len(runs[NONE])
    base = np.array([r.cascade for r in runs[NONE]])
    masks = [stretches(r) for r in runs[NONE]]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    per: dict[str, dict[str, list[float]]] = {arm: {"prevented_share": [], "lost_share_cascade_free": []}
                                              for arm in runs}
    ratio = []
    kept = {arm: np.array([r.cascade for r in rs]) & base for arm, rs in runs.items()}
    off_f = {arm: np.array([r.offered[~m].sum() for r, m in zip(rs, masks)]) for arm, rs in runs.items()}
    lost_f = {arm: np.array([r.lost[~m].sum() for r, m in zip(rs, masks)]) for arm, rs in runs.items()}
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        b = base[pick].sum()
        prevented = {arm: b - kept[arm][pick].sum() for arm in runs}
        for arm in runs:
            if b:
                per[arm]["prevented_share"].append(prevented[arm] / b)
            o = off_f[arm][pick].sum()
            if o:
                per[arm]["lost_share_cascade_free"].append(lost_f[arm][pick].sum() / o)
        if STATIC in runs and AURA in runs and prevented[STATIC] > 0:
            ratio.append(prevented[AURA] / prevented[STATIC])
    out = {arm: {k: ([float(np.percentile(v, lo)), float(np.percentile(v, hi))] if v else None)
                 for k, v in d.items()} for arm, d in per.items()}
    out["aura_over_static_prevented"] = ([float(np.percentile(ratio, lo)), float(np.percentile(ratio, hi))]
                                         if ratio else None)
    out["level"] = level
    return out


# -- the whole run -----------------------------------------------------------------------------
def _run_many(jobs: list[tuple[ScenarioConfig, ArmPlan]], cfg: LoopConfig, label: str) -> list[ArmRun]:
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"closed loop: {label}", unit="run", file=sys.stderr)
    out: list[ArmRun | None] = [None] * len(jobs)
    try:
        if cfg.jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(cfg.jobs) as ex:
                futs = {ex.submit(run_arm, sc, plan, cfg): i for i, (sc, plan) in enumerate(jobs)}
                for f in as_completed(futs):
                    out[futs[f]] = f.result()
                    if bar:
                        bar.update()
        else:
            for i, (sc, plan) in enumerate(jobs):
                out[i] = run_arm(sc, plan, cfg)
                if bar:
                    bar.update()
    finally:
        if bar:
            bar.close()
    return out  # type: ignore[return-value]


def fit_plans(cfg: LoopConfig, log: Callable[[str], None]) -> tuple[dict[str, ArmPlan], dict]:
    """Freeze each acting arm's plan on the validation scenarios only."""
    val = loop_scenarios(cfg, "validation")
    log(f"validation: {len(val)} scenarios, no-action arm (model and static rule scored on every window)")
    none = _run_many([(sc, ArmPlan(NONE)) for sc in val], cfg, "validation, no action")
    refs = static_refs(none)
    neg = [negative_windows(r) for r in none]
    trusted = [np.array([st == OK for st in r.status]) for r in none]
    static_scores = [(lv := static_levels(r, refs)) / (1.0 + lv) for r in none]
    fitted: dict = {"static_refs": list(refs), "grid": [], "validation": summarise({NONE: none})}
    plans: dict[str, ArmPlan] = {}
    for arm, scores, masks in ((STATIC, static_scores, neg), (AURA, [r.risk for r in none],
                                                                 [n & t for n, t in zip(neg, trusted)])):
        best = None
        cuts = list(zip(candidate_cuts(scores, masks, cfg.cut_quantiles), cfg.cut_quantiles))
        for ((el, hi), qs), variant in ((c, v) for c in cuts for v in cfg.playbook_grid):
            book = tuple({**dict(LOOP_PLAYBOOK), **dict(variant)}.items())
            plan = ArmPlan(arm, el, hi, refs, playbook=book)
            runs = _run_many([(sc, plan) for sc in val], cfg, f"validation, {arm} {qs} {dict(variant)}")
            s = summarise({NONE: none, arm: runs})
            obj = objective(s, arm)
            keep = ("prevented", "new_cascades", "lost_share_cascade_free", "excess_lost_share_cascade_free")
            fitted["grid"].append({"arm": arm, "quantiles": list(qs), "elevated": el, "high": hi,
                                   "playbook": dict(variant), "objective": obj,
                                   **{k: s[arm][k] for k in keep}})
            log(f"  {arm} cuts at quantiles {qs}: {el:.3f}/{hi:.3f}, {dict(variant)}: prevented "
                f"{s[arm]['prevented']}/{s['cascades_without_action']} (+{s[arm]['new_cascades']} new), "
                f"lost on cascade-free stretches {100 * s[arm]['lost_share_cascade_free']:.2f} % (no action "
                f"{100 * s[NONE]['lost_share_cascade_free']:.2f} %)")
            if best is None or obj > best[0]:
                best = (obj, plan, qs)
        plans[arm] = best[1]
        fitted[arm] = {"quantiles": list(best[2]), "elevated": best[1].elevated, "high": best[1].high,
                       "playbook": dict(best[1].playbook)}
    return plans, fitted


def run_closed_loop(cfg: LoopConfig, log: Callable[[str], None] = print) -> dict:
    """Fit on validation, then run the four arms on test; write metrics.json and report.html."""
    import json

    from pipelines.backtest.loop_report import write_report

    cfg.validate()
    os.makedirs(cfg.out, exist_ok=True)
    plans, fitted = fit_plans(cfg, log)
    test = loop_scenarios(cfg, "test")
    log(f"test: {len(test)} scenarios x 4 arms (plans frozen on validation)")
    none = _run_many([(sc, ArmPlan(NONE)) for sc in test], cfg, "test, no action")
    jobs = []
    for sc, n in zip(test, none):
        jobs += [(sc, plans[STATIC]), (sc, plans[AURA]),
                 (sc, ArmPlan(ORACLE, 0.5, 0.5, plans[STATIC].static_refs,
                              oracle_span(n, cfg.oracle_lead_s)))]
    rest = _run_many(jobs, cfg, "test, acting arms")
    runs = {NONE: none, STATIC: rest[0::3], AURA: rest[1::3], ORACLE: rest[2::3]}
    metrics = {"config": {k: v for k, v in asdict(cfg).items() if k != "out"}, "fitted_on_validation": fitted,
               "test": summarise(runs), "intervals": bootstrap(runs)}
    metrics["bar"] = check_bar(metrics)
    if cfg.plan_out:
        with open(cfg.plan_out, "w") as f:
            json.dump({"elevated": plans[AURA].elevated, "high": plans[AURA].high,
                       "playbook": dict(plans[AURA].playbook),
                       "fitted": f"{cfg.val_scenarios} validation scenarios, seed {cfg.seed}, cut quantiles "
                                 f"{fitted[AURA]['quantiles']}"}, f, indent=2)
    with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=_json_default)
    write_report(os.path.join(cfg.out, "report.html"), runs, metrics)
    log(headline(metrics))
    return metrics


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def check_bar(metrics: dict) -> dict:
    """The issue's bar on test: AURA prevents >= 80 % of the no-action cascades (or, per
    mechanism, >= 90 % of what the oracle prevents), >= 1.5x the static arm, and loses
    < 0.5 % of requests on cascade-free stretches."""
    t = metrics["test"]
    a, s, o = t[AURA], t[STATIC], t[ORACLE]
    per_mech = {}
    for m in MECHANISMS:
        ap, op = a["prevented_by_mechanism"][m], o["prevented_by_mechanism"][m]
        per_mech[m] = {"aura": ap, "oracle": op,
                       "met": None if ap is None else bool(ap >= 0.8 or (op is not None and ap >= 0.9 * op))}
    ratio = a["prevented"] / s["prevented"] if s["prevented"] else (float("inf") if a["prevented"] else None)
    return {
        "prevented_share": a["prevented_share"],
        "prevented_met": bool((a["prevented_share"] or 0) >= 0.8
                              or all(v["met"] in (True, None) for v in per_mech.values())),
        "per_mechanism": per_mech,
        "over_static": ratio,
        "over_static_met": bool(ratio is not None and ratio >= 1.5),
        "lost_share_cascade_free": a["lost_share_cascade_free"],
        "lost_met": bool((a["lost_share_cascade_free"] or 0.0) < 0.005),
    }


def headline(metrics: dict) -> str:
    t = metrics["test"]
    lines = [f"closed loop on {t['scenarios']} test scenarios: {t['cascades_without_action']} cascades"
             " without action"]
    for arm in (STATIC, AURA, ORACLE):
        a = t[arm]
        lost = a["lost_share_cascade_free"]
        lines.append(f"  {arm:7s} prevented {a['prevented']}/{t['cascades_without_action']}"
                     f" (+{a['new_cascades']} new), lost on cascade-free stretches "
                     f"{'n/a' if lost is None else f'{100 * lost:.2f} %'}, actions {a['actions']}"
                     f" ({a['rolled_back']} rolled back)")
    b = metrics["bar"]
    lines.append(f"  bar: prevented {'met' if b['prevented_met'] else 'NOT met'}, x static "
                 f"{'met' if b['over_static_met'] else 'NOT met'}, "
                 f"cost {'met' if b['lost_met'] else 'NOT met'}")
    return "\n".join(lines)
