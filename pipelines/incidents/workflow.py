"""The incident workflow: a LangGraph ``StateGraph`` per incident, checkpointed (SQLite).

assess -> localise -> decide -> [approve] -> act -> verify -> ... -> close. One thread per
incident (thread id = incident id ``inc-<tenant>-<window start ms>``). ``observe`` feeds one
window of one tenant (in window order): a committed ``ok`` verdict at least ``elevated``
opens an incident when none is open; later windows resume the open incident's ``verify`` (or
are noted while it waits at ``approve``). Only committed ``ok`` windows move an incident or
back an intervention; the others are noted in its timeline.

- approve: actions whose ``impact`` exceeds ``approve_above`` wait for ``approve()`` (a
  LangGraph ``interrupt``) unless an ``approver`` callable answers; a rejected one is skipped.
- act: delivers the plan through the ``Actuator``; a new action that replaces an active one of
  the same kind on the same targets (a bigger shed) rolls the old one back first.
- verify: one committed window per step. Fleet worse (risk band or health up) -> escalate;
  no improvement within ``verify_windows`` -> roll back that round's actions, escalate;
  ``close_windows`` calm windows (below elevated, healthy) -> close. Escalation re-ranks
  (localise) on the window's snapshot, then decides again.
- close: rolls back what is still active; outcome ``averted`` | ``recovered`` (the fleet was
  unhealthy on the way) | ``no_action``.

Every step appends ``{step, window_end, reason}`` to the state's timeline; resume inputs
(windows without snapshots, approvals) are kept in ``inputs`` so ``replay`` can re-feed them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from pipelines import failpoints
from pipelines.alerts.mechanism import LOAD_REDISTRIBUTION, LOSS, TRACKED, UNKNOWN, Baseline, classify
from pipelines.alerts.policy import DEGRADED, HEALTHY, UNHEALTHY, AlertPolicy
from pipelines.calibration import OK
from pipelines.incidents import graph_rows, store
from pipelines.incidents.actuator import Actuator, Delivery
from pipelines.incidents.interventions import ROLLBACK, Intervention, Link, impact
from pipelines.incidents.localise import Target, entry_agents, rank_targets
from pipelines.incidents.playbook import BANDS, HIGH, LOW, ActionSpec, Assessment, Playbook, decide
from pipelines.windowing import WindowSnapshot

NODES = ("assess", "localise", "decide", "approve", "act", "verify", "close")
LOOPS, LOOP_MASS = "stress_h1_betti_t0.5", "stress_h1_total_persistence"
USED = (*TRACKED, "unhealthy_frac", "error_rate_p90", "edge_error_share", LOOPS, LOOP_MASS)
HEALTH_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
OPEN, CLOSED = "open", "closed"
ACTIVE, FAILED, REJECTED, ROLLED_BACK, LAPSED, DONE = (
    "active", "failed", "rejected", "rolled_back", "lapsed", "done")
TREND_WINDOWS = 4  # probabilities the trend is taken over


@dataclass(frozen=True)
class WindowObservation:
    """One (tenant, window): its verdict, certificate (None: not committed) and evidence."""

    tenant: str
    window_start: int  # ms
    window_end: int  # ms
    probability: float
    certificate: dict | str | None
    status: str = OK  # ok | calibrating | out_of_distribution
    features: Mapping[str, float] = field(default_factory=dict)
    snapshot: WindowSnapshot | None = None
    at_s: float = 0.0  # epoch s when the verdict is available (0: the window's end)

    @property
    def acts(self) -> bool:
        """A committed verdict the model is sure of: the only kind that moves an incident."""
        return bool(self.certificate) and self.status == OK

    def doc(self) -> dict:
        """The window as the state keeps it: the features the workflow reads, no snapshot."""
        f = self.features
        return {"tenant": self.tenant, "window_start": int(self.window_start),
                "window_end": int(self.window_end), "probability": float(self.probability),
                "certificate": self.certificate or None, "status": self.status,
                "features": {k: float(f[k]) for k in USED if k in f and math.isfinite(f[k])},
                "at_s": float(self.at_s or self.window_end / 1000)}


class State(TypedDict, total=False):
    """One incident (every value plain data, so checkpoints stay readable without the graph)."""

    id: str
    tenant: str
    status: str  # open | closed
    route: str  # the next step
    opened: int  # window start (ms) of the verdict that opened it
    closed: int | None  # window end (ms) of the window that closed it
    window: dict  # the latest committed ok window (``WindowObservation.doc``)
    snapshot: WindowSnapshot | None  # evidence for localise (per-sample arrays dropped)
    baseline: list  # the tenant's mechanism baseline at opening: [n, [[feature, mean], ...]]
    history: list[float]  # probabilities of the tenant's preceding windows (trend)
    playbook: dict
    approve_above: float
    assessment: dict
    mechanism: str
    targets: list[dict]
    entries: list[str]
    plan: list[dict]  # intervention documents decided, not yet delivered
    actions: list[dict]  # intervention documents + status + round
    deliveries: list[dict]
    round: int
    escalation: int
    verify: dict  # band and health ranks at the decision, windows seen, improved, calm
    timeline: list[dict]
    inputs: list[dict]  # resume inputs in order
    outcome: str | None
    max_risk: float
    worst_health: int
    now: float  # epoch s of the latest window
    last_window: int  # start (ms) of the latest window seen


def incident_id(tenant: str, window_start_ms: int) -> str:
    return f"inc-{tenant}-{int(window_start_ms)}"


def _lean(snap: WindowSnapshot | None) -> WindowSnapshot | None:
    if snap is None:
        return None
    return dataclasses.replace(snap, sample_agent=np.zeros(0, np.int32), sample_offset_s=np.zeros(0),
                               sample_values=np.zeros((0, snap.metrics.shape[1])))


def _target_doc(t: Any) -> dict:
    return {"agent": t.agent, "score": float(t.score), "stress": float(t.stress), "blast": float(t.blast),
            "callers": list(t.callers)}


def _spec(doc: Mapping[str, Any]) -> ActionSpec:
    return ActionSpec(doc["kind"], tuple(doc["targets"]), doc["magnitude"], doc["ttl_s"], doc["reason"],
                      tuple(Link(x["caller"], x["callee"]) for x in doc.get("links", ())))


def _baseline(s: Mapping[str, Any]) -> Baseline:
    return Baseline(s["baseline"][0], tuple((k, v) for k, v in s["baseline"][1]))


def _note(s: Mapping[str, Any], step: str, reason: str, window: Mapping | None = None) -> list[dict]:
    w = window or s.get("window") or {}
    return [*s.get("timeline", []), {"step": step, "window_end": w.get("window_end"), "reason": reason}]


@dataclass
class _Tenant:
    """Between incidents: the mechanism baseline and the recent probabilities (trend)."""

    baseline: Baseline = field(default_factory=Baseline)
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TREND_WINDOWS))


class IncidentWorkflow:
    """Incidents of every tenant, one LangGraph thread each (module doc)."""

    def __init__(self, checkpointer_path: str | None, actuator: Actuator, playbook: Playbook,
                 approve_above: float = 0.2, approver: Callable[[Intervention], bool] | None = None,
                 graph_sink: Any = None, rank: Callable[..., list] = rank_targets,
                 entries: Callable[[WindowSnapshot], list[str]] = entry_agents,
                 policy: AlertPolicy | None = None) -> None:
        self.actuator, self.book, self.approver = actuator, playbook, approver
        self.approve_above, self.sink, self.rank, self.entries = approve_above, graph_sink, rank, entries
        self.policy = policy or AlertPolicy()
        self.saver = store.open_saver(checkpointer_path)
        self.graph = self._build().compile(checkpointer=self.saver)
        self._tenants: dict[str, _Tenant] = collections.defaultdict(_Tenant)
        self._open: dict[str, str] = {}
        self._last: dict[str, int] = {}
        for rec in store.incidents(self.saver):  # carry on after a restart
            self._last[rec["tenant"]] = max(self._last.get(rec["tenant"], -1), rec["last_window"])
            if rec["status"] == OPEN:
                self._open[rec["tenant"]] = rec["id"]

    # -- the graph ------------------------------------------------------------------------
    def _build(self) -> StateGraph:
        g = StateGraph(State)
        for name in NODES:
            g.add_node(name, getattr(self, f"_{name}"))
        g.add_edge(START, "assess")
        g.add_edge("assess", "localise")
        g.add_edge("localise", "decide")
        g.add_conditional_edges("decide", _route, ["approve", "act", "verify"])
        g.add_conditional_edges("approve", _route, ["approve", "act"])
        g.add_edge("act", "verify")
        g.add_conditional_edges("verify", _route, ["verify", "localise", "close"])
        g.add_edge("close", END)
        return g

    def _assess_window(self, s: Mapping[str, Any], w: Mapping[str, Any], escalation: int) -> Assessment:
        f, p = w["features"], w["probability"]
        health = self.policy.health(f)
        band = HIGH if health == UNHEALTHY else self.book.band(p)  # a running cascade is high risk
        hist = [*s.get("history", []), p][-TREND_WINDOWS:]
        base = _baseline(s)
        rf, rb = f.get("reporting_frac"), base.get("reporting_frac")
        lost = rf is not None and (rf - rb <= -LOSS if rb is not None else rf <= 1 - LOSS)
        return Assessment(p, band, (hist[-1] - hist[0]) / max(len(hist) - 1, 1), health,
                          f.get(LOOPS, 0.0) > 0, bool(lost), escalation)

    def _assess(self, s: State) -> dict:
        a = self._assess_window(s, s["window"], 0)
        mech = classify(s["window"]["features"], _baseline(s))
        if a.agents_lost and mech == UNKNOWN:
            mech = LOAD_REDISTRIBUTION
        why = f"{a.band} risk {a.probability:.3f} (trend {a.trend:+.3f}/window), fleet {a.health}, {mech}" + \
            (", stressed H1 loops" if a.loops else "") + (", agents lost" if a.agents_lost else "")
        return {"assessment": asdict(a), "mechanism": mech, "route": "localise",
                "worst_health": max(s.get("worst_health", 0), HEALTH_RANK.get(a.health, 0)),
                "timeline": _note(s, "assess", why)}

    def _localise(self, s: State) -> dict:
        snap = s.get("snapshot")
        if snap is None:
            return {"route": "decide", "timeline": _note(s, "localise", f"no snapshot: keeping "
                                                         f"{len(s.get('targets', []))} earlier target(s)")}
        targets = [_target_doc(t) for t in self.rank(snap, k=max(10, self.book.top_k))]
        entries = list(self.entries(snap))
        top = ", ".join(t["agent"] for t in targets[:self.book.top_k]) or "none"
        return {"targets": targets, "entries": entries, "route": "decide",
                "timeline": _note(s, "localise", f"top {top}; {len(entries)} entry agent(s)")}

    def _decide(self, s: State) -> dict:
        tried = [_spec(x) for x in s["actions"]  # in force, or tried already: never repeated
                 if x["kind"] != ROLLBACK and x["status"] in (ACTIVE, ROLLED_BACK, REJECTED)]
        targets = [Target(t["agent"], t["score"], t["stress"], t["blast"], tuple(t["callers"]))
                   for t in s["targets"]]
        a = Assessment(**s["assessment"])
        ivs = [self._intervention(s, x.kind, x.targets, x.magnitude, x.ttl_s, x.reason, x.links)
               for x in decide(a, targets, s["entries"], tried, self.book, s["mechanism"])]
        plan = [iv.to_dict() for iv in ivs]
        big = any(impact(iv) > self.approve_above for iv in ivs)
        route = "approve" if big else "act" if plan else "verify"
        why = ", ".join(f"{d['kind']}({d['magnitude']:g}) on {'/'.join(d['targets'])}" for d in plan)
        out: dict = {"plan": plan, "route": route, "timeline": _note(s, "decide", why or "no new action")}
        if not plan:
            out["verify"] = self._verify_start(a, s.get("round", 0))
        return out

    def _approve(self, s: State) -> dict:
        big = [d for d in s["plan"] if impact(Intervention.from_dict(d)) > self.approve_above]
        if not big:
            return {"route": "act"}
        extra: dict = {}
        if self.approver is not None:
            by, verdicts = "approver", {d["id"]: bool(self.approver(Intervention.from_dict(d))) for d in big}
        else:
            msg = interrupt({"incident": s["id"], "approve": big, "approve_above": self.approve_above})
            extra = _took(s, msg)
            if "window" in msg:  # a window while waiting: noted, nothing else
                return {**extra, "route": "approve",
                        "timeline": _note(s, "approve", "waiting for approval", msg["window"])}
            by = str(msg["approval"].get("by", ""))
            verdicts = {d["id"]: bool(msg["approval"]["approved"]) for d in big}
        keep = [d for d in s["plan"] if verdicts.get(d["id"], True)]
        dropped = [{**d, "status": REJECTED, "round": s["round"] + 1}
                   for d in s["plan"] if not verdicts.get(d["id"], True)]
        why = f"{len(big) - len(dropped)} approved, {len(dropped)} rejected by {by or 'unknown'}"
        return {**extra, "plan": keep, "actions": [*s["actions"], *dropped], "route": "act",
                "timeline": _note(s, "approve", why)}

    def _act(self, s: State) -> dict:
        rnd, actions, deliveries = s["round"] + 1, list(s["actions"]), list(s["deliveries"])
        for doc in s["plan"]:
            new = _spec(doc)
            for old in actions:  # a bigger shed (say) replaces the active one on the same targets
                if old["status"] == ACTIVE and old["kind"] != ROLLBACK and _spec(old).key[:3] == new.key[:3]:
                    undo = self._rollback(s, old, f"superseded by {doc['id']}")
                    self._deliver(s, undo, actions, deliveries, rnd)
            self._deliver(s, Intervention.from_dict(doc), actions, deliveries, rnd)
        failpoints.hit("workflow.acted")  # delivered, not yet checkpointed: a restart acts again
        done = [d["status"] for d in deliveries[len(s["deliveries"]):]]
        return {"plan": [], "actions": actions, "deliveries": deliveries, "round": rnd, "route": "verify",
                "verify": self._verify_start(Assessment(**s["assessment"]), rnd),
                "timeline": _note(s, "act", f"{len(done)} delivered: {', '.join(done) or 'none'}")}

    def _verify(self, s: State) -> dict:
        msg = interrupt({"incident": s["id"], "waiting": "window"})
        if "window" not in msg:
            return {"route": "verify", "timeline": _note(s, "verify", "not waiting for an approval: ignored")}
        w = msg["window"]
        out: dict = {**_took(s, msg), "route": "verify"}
        if not (w["certificate"] and w["status"] == OK):
            why = "not committed" if not w["certificate"] else f"held back ({w['status']})"
            return {**out, "timeline": _note(s, "verify", f"{why}: no action", w)}
        s2 = {**s, **out, "window": w}
        actions, deliveries = self._lapse(s2["actions"], w["at_s"]), list(s["deliveries"])
        a = self._assess_window(s, w, s["escalation"])
        v = dict(s["verify"], windows=s["verify"]["windows"] + 1)
        band, health = BANDS.index(a.band), HEALTH_RANK.get(a.health)
        worse = band > v["band"] or (health is not None and v["health"] is not None and health > v["health"])
        v["improved"] = v["improved"] or band < v["band"] or (
            health is not None and v["health"] is not None and health < v["health"])
        v["calm"] = v["calm"] + 1 if a.band == LOW and a.health == HEALTHY else 0
        out.update(window=w, verify=v, max_risk=max(s["max_risk"], a.probability),
                   worst_health=max(s["worst_health"], health or 0))
        if v["calm"] >= self.book.close_windows:
            why, out["route"] = f"{v['calm']} calm window(s)", "close"
        elif worse or (v["windows"] >= self.book.verify_windows and not v["improved"]):
            if worse:
                why = f"fleet worse ({a.band}, {a.health}): escalate"
            else:
                stale = [x for x in actions if x["status"] == ACTIVE and x["round"] == v["round"]
                         and x["kind"] != ROLLBACK] if self.book.rollback_unhelpful else []
                for x in stale:
                    self._deliver(s2, self._rollback(s2, x, "did not help"), actions, deliveries, s["round"])
                why = f"no improvement in {v['windows']} window(s): rolled back {len(stale)}, escalate"
            mech = s["mechanism"]
            if mech == UNKNOWN and a.health != UNHEALTHY:
                mech = classify(w["features"], _baseline(s))
            out.update(route="localise", escalation=s["escalation"] + 1, mechanism=mech,
                       assessment=asdict(dataclasses.replace(a, escalation=s["escalation"] + 1)))
            if msg.get("snapshot") is not None:
                out["snapshot"] = msg["snapshot"]
        else:
            why = f"{a.band} risk {a.probability:.3f}, fleet {a.health}: watching ({v['windows']})"
        return {**out, "actions": actions, "deliveries": deliveries, "timeline": _note(s, "verify", why, w)}

    def _close(self, s: State) -> dict:
        actions, deliveries = self._lapse(s["actions"], s["now"]), list(s["deliveries"])
        live = [x for x in actions if x["status"] == ACTIVE and x["kind"] != ROLLBACK]
        for x in live:
            self._deliver(s, self._rollback(s, x, "incident closed"), actions, deliveries, s["round"])
        took = any(x["status"] in (ACTIVE, ROLLED_BACK, LAPSED) for x in actions if x["kind"] != ROLLBACK)
        outcome = "no_action" if not took else "recovered" if s["worst_health"] >= 2 else "averted"
        return {"status": CLOSED, "closed": s["window"]["window_end"], "outcome": outcome, "route": END,
                "actions": actions, "deliveries": deliveries,
                "timeline": _note(s, "close", f"{outcome}; rolled back {len(live)} active action(s)")}

    # -- helpers of the nodes ----------------------------------------------------------------
    def _verify_start(self, a: Assessment, rnd: int) -> dict:
        return {"band": BANDS.index(a.band), "health": HEALTH_RANK.get(a.health), "windows": 0,
                "improved": False, "calm": 0, "round": rnd}

    def _intervention(self, s: Mapping[str, Any], kind: str, targets: tuple, magnitude: float,
                      ttl_s: float, reason: str, links: tuple = (), rollback_of: str | None = None
                      ) -> Intervention:
        """Bound to the incident's latest committed ok window (its verdict and certificate)."""
        w = s["window"]
        return Intervention(s["tenant"], w["window_start"], w["window_end"], w["probability"],
                            w["certificate"], kind, tuple(targets), float(magnitude), float(ttl_s), reason,
                            float(s["now"]), tuple(links), self.book.band(w["probability"]), s["id"],
                            rollback_of)

    def _rollback(self, s: Mapping[str, Any], old: Mapping[str, Any], why: str) -> Intervention:
        return self._intervention(s, ROLLBACK, tuple(old["targets"]), 1.0, self.book.action_ttl_s,
                                  f"roll back {old['kind']}: {why}", rollback_of=old["id"])

    def _deliver(self, s: Mapping[str, Any], iv: Intervention, actions: list, deliveries: list,
                 rnd: int) -> None:
        d = self.actuator.act(iv, float(s["now"]))
        deliveries.append(asdict(d))
        status = (DONE if iv.kind == ROLLBACK else ACTIVE) if d.ok else FAILED
        actions.append({**iv.to_dict(), "status": status, "round": rnd})
        if d.ok and iv.rollback_of:
            for i, x in enumerate(actions):
                if x["id"] == iv.rollback_of and x["status"] == ACTIVE:
                    actions[i] = {**x, "status": ROLLED_BACK}

    @staticmethod
    def _lapse(actions: list[dict], now: float) -> list[dict]:
        return [{**x, "status": LAPSED} if x["status"] == ACTIVE and x["kind"] != ROLLBACK
                and x["issued_at"] + x["ttl_s"] <= now else x for x in actions]

    # -- driving it ---------------------------------------------------------------------------
    def observe(self, obs: WindowObservation) -> list[Delivery]:
        """Feed one window of one tenant (in window order); the deliveries made in this step."""
        if obs.window_start <= self._last.get(obs.tenant, -1):
            return []  # seen already (a redelivery, a stream re-read after a restart)
        self._last[obs.tenant] = obs.window_start
        t, doc, inc = self._tenants[obs.tenant], obs.doc(), self._open.get(obs.tenant)
        out: list[Delivery] = []
        if inc is not None:
            out = self._run(inc, {"window": doc, "snapshot": _lean(obs.snapshot)})
        elif obs.acts and obs.probability >= self.book.elevated and self._persists(t):
            iid = incident_id(obs.tenant, obs.window_start)
            out = self._run(iid, self._opening(iid, doc, obs, t), start=True)
        if obs.acts:
            calm = self.policy.health(obs.features) == HEALTHY and self.book.band(obs.probability) == LOW
            if inc is None and calm:
                t.baseline = t.baseline.update(obs.features)
            t.history.append(float(obs.probability))
        return out

    def _persists(self, t: _Tenant) -> bool:
        """The warning held: the tenant's previous ``open_windows - 1`` trusted windows were
        at or above elevated too."""
        need = self.book.open_windows - 1
        recent = list(t.history)[-need:] if need else []
        return len(recent) == need and all(p >= self.book.elevated for p in recent)

    def _opening(self, iid: str, doc: dict, obs: WindowObservation, t: _Tenant) -> State:
        return State(id=iid, tenant=obs.tenant, status=OPEN, route="assess", opened=doc["window_start"],
                     closed=None, window=doc, snapshot=_lean(obs.snapshot),
                     baseline=[t.baseline.n, [list(x) for x in t.baseline.mean]], history=list(t.history),
                     playbook=asdict(self.book), approve_above=self.approve_above, assessment={},
                     mechanism=UNKNOWN, targets=[], entries=[], plan=[], actions=[], deliveries=[], round=0,
                     escalation=0, verify={}, inputs=[], outcome=None, max_risk=doc["probability"],
                     worst_health=0, now=doc["at_s"], last_window=doc["window_start"],
                     timeline=[{"step": "open", "window_end": doc["window_end"], "reason":
                                f"committed verdict {doc['probability']:.3f} >= {self.book.elevated}"}])

    def approve(self, incident_id: str, approved: bool, by: str) -> list[Delivery]:
        """Answer an incident waiting at approve; the deliveries that followed."""
        st = self.graph.get_state(_config(incident_id))
        if st.next != ("approve",) or not st.interrupts:
            raise ValueError(f"incident {incident_id} is not waiting for an approval (next: {st.next})")
        return self._run(incident_id, {"approval": {"approved": bool(approved), "by": by}})

    def _run(self, iid: str, payload: Mapping[str, Any], start: bool = False) -> list[Delivery]:
        cfg = _config(iid)
        st = self.graph.get_state(cfg)
        values, n0 = dict(st.values or {}), len((st.values or {}).get("deliveries", []))
        waiting = bool(st.interrupts)
        if st.next and not waiting:  # a step cut short (a killed process): run it again
            values = self._invoke(None, cfg)
            waiting = "__interrupt__" in values
        if start and not st.values:
            values = self._invoke(payload, cfg)
        elif not start and waiting:
            values = self._invoke(Command(resume=dict(payload)), cfg)
        return self._after(iid, values, n0)

    def _invoke(self, payload: Any, cfg: dict) -> dict:
        """Run until the next interrupt or the end (each step on disk before the next starts);
        the values, with ``__interrupt__`` when it waits."""
        return self.graph.invoke(payload, cfg, durability="sync")

    def _after(self, iid: str, values: Mapping[str, Any], n0: int) -> list[Delivery]:
        if values.get("status") == OPEN:
            self._open[values["tenant"]] = iid
        elif self._open.get(values.get("tenant")) == iid:
            del self._open[values["tenant"]]
        new = values.get("deliveries", [])[n0:]
        if self.sink is not None and (new or values.get("status") == CLOSED):
            graph_rows.write_incident(self.sink, values)
        return [Delivery(**d) for d in new]

    # -- reading back ---------------------------------------------------------------------------
    def incidents(self) -> list[dict]:
        """One summary per incident in the checkpoint DB."""
        return store.incidents(self.saver)

    def show(self, incident_id: str) -> dict:
        """The incident's latest state (plain data) and its checkpoint history."""
        return store.show(self.saver, incident_id)

    def replay(self, incident_id: str, from_step: str) -> dict:
        """Re-run from the earliest checkpoint whose next step is ``from_step``, re-feeding the
        inputs recorded after it (with this workflow's playbook and actuator)."""
        if from_step not in NODES:
            raise ValueError(f"unknown step {from_step!r}: one of {', '.join(NODES)}")
        cfg = _config(incident_id)
        hist = list(self.graph.get_state_history(cfg))
        if not hist:
            raise ValueError(f"no incident {incident_id}")
        recorded = hist[0].values.get("inputs", [])
        forks = [h for h in hist if h.next == (from_step,)]
        if not forks:
            raise ValueError(f"incident {incident_id} never reached {from_step}")
        fork = forks[-1]
        n0 = len(fork.values.get("deliveries", []))
        self._invoke(None, fork.config)
        for msg in recorded[len(fork.values.get("inputs", [])):]:
            st = self.graph.get_state(cfg)
            if not st.interrupts:
                break
            if st.next == ("approve",) or "window" in msg:
                self._invoke(Command(resume=msg), cfg)
        self._after(incident_id, self.graph.get_state(cfg).values, n0)
        return self.show(incident_id)


def _took(s: Mapping[str, Any], msg: Mapping[str, Any]) -> dict:
    """The state update for a resume input: recorded (without its snapshot) and, for a window, its time."""
    out: dict = {"inputs": [*s["inputs"], {k: v for k, v in msg.items() if k != "snapshot"}]}
    if "window" in msg:
        out.update(now=msg["window"]["at_s"], last_window=msg["window"]["window_start"])
    return out


def _route(s: State) -> str:
    return s["route"]


def _config(incident_id: str) -> dict:
    return {"configurable": {"thread_id": incident_id}}
