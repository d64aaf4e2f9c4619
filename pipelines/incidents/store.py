"""Incidents read back from the workflow's checkpoint DB, and the ``aura incident`` command.

Each incident is one LangGraph thread; its latest checkpoint's values are the incident (plain
data, ``pipelines.incidents.workflow.State``), so listing and showing need no graph, only the
checkpointer. ``route`` in the values is the step the incident is at (or ``__end__``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # langgraph is imported when a DB is opened, not with the command line
    from langgraph.checkpoint.base import BaseCheckpointSaver

DEFAULT_DB = os.path.join("output", "api", "run", "incidents.sqlite")  # where ``aura api`` keeps it
SERDE_TYPES = [("pipelines.windowing", "WindowSnapshot")]  # the only non-plain value a state holds


def open_saver(path: str | None) -> BaseCheckpointSaver:
    """A durable ``SqliteSaver`` on ``path`` (None: in memory, for the backtest's speed)."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from langgraph.checkpoint.sqlite import SqliteSaver

    serde = JsonPlusSerializer(allowed_msgpack_modules=SERDE_TYPES)
    if path is None:
        return InMemorySaver(serde=serde)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return SqliteSaver(sqlite3.connect(path, check_same_thread=False), serde=serde)


@contextlib.contextmanager
def writer_lock(path: str) -> Iterator[None]:
    """One writer of the DB at ``path`` at a time, across processes (the service's feed, an
    approval, a replay): an exclusive ``flock`` on ``<path>.lock``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def thread_ids(saver: BaseCheckpointSaver) -> list[str]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    if isinstance(saver, SqliteSaver):
        saver.setup()
        with saver.cursor(transaction=False) as cur:
            cur.execute("SELECT DISTINCT thread_id FROM checkpoints WHERE checkpoint_ns = ''")
            return sorted(r[0] for r in cur.fetchall())
    return sorted({c.config["configurable"]["thread_id"] for c in saver.list(None)})


def values(saver: BaseCheckpointSaver, incident_id: str) -> dict:
    """The incident's latest values ({} when there is no such incident)."""
    tup = saver.get_tuple({"configurable": {"thread_id": incident_id, "checkpoint_ns": ""}})
    return dict(tup.checkpoint["channel_values"]) if tup else {}


def summary(v: dict) -> dict:
    delivered = [a for a in v.get("actions", []) if a.get("status") not in ("rejected", "failed")]
    return {"id": v.get("id"), "tenant": v.get("tenant"), "status": v.get("status"), "step": v.get("route"),
            "opened": v.get("opened"), "closed": v.get("closed"), "outcome": v.get("outcome"),
            "mechanism": v.get("mechanism"), "max_risk": v.get("max_risk"),
            "escalation": v.get("escalation", 0), "actions": len(delivered),
            "last_window": v.get("last_window", v.get("opened", -1))}


def incidents(saver: BaseCheckpointSaver) -> list[dict]:
    """A summary per incident, by opening window."""
    out = [summary(v) for tid in thread_ids(saver) if (v := values(saver, tid)).get("id")]
    return sorted(out, key=lambda r: (r["opened"] or 0, r["id"]))


def _plain(v: dict) -> dict:
    return json.loads(json.dumps({k: x for k, x in v.items() if k != "snapshot"}, default=str))


def show(saver: BaseCheckpointSaver, incident_id: str) -> dict:
    """The latest values (no snapshot) and the checkpoint history, oldest first."""
    v = values(saver, incident_id)
    if not v:
        raise ValueError(f"no incident {incident_id}")
    cfg = {"configurable": {"thread_id": incident_id, "checkpoint_ns": ""}}
    hist = [{"checkpoint_id": c.config["configurable"]["checkpoint_id"], "step": c.metadata.get("step"),
             "source": c.metadata.get("source"),
             "next": c.checkpoint["channel_values"].get("route", "__start__")} for c in saver.list(cfg)]
    return {"incident": _plain(v), "history": hist[::-1]}


# -- aura incident -----------------------------------------------------------------------------
def add_incident_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB,
                   help=f"the workflow's SQLite checkpoint file (default {DEFAULT_DB})")
    sub = p.add_subparsers(dest="incident_command", required=True)
    ls = sub.add_parser("list", help="every incident: status, step, outcome")
    ls.add_argument("--json", action="store_true")
    sub.add_parser("show", help="one incident: state, timeline, actions, checkpoints").add_argument("id")
    rp = sub.add_parser("replay", help="re-run an incident from a step (forks its checkpoint history)")
    rp.add_argument("id")
    rp.add_argument("--from", dest="from_step", required=True,
                    help="assess | localise | decide | approve | act | verify | close")
    rp.add_argument("--actuator", default="dry-run", help="dry-run[:PATH] (default) or webhook:URL")
    ap = sub.add_parser("approve", help="answer an incident waiting for approval; its actions follow")
    ap.add_argument("id")
    ap.add_argument("--reject", action="store_true", help="reject the waiting actions (the others go ahead)")
    ap.add_argument("--by", default=None, help="who decided (default: $USER)")
    ap.add_argument("--actuator", help="dry-run[:PATH] or webhook:URL (default: the one the service "
                    "recorded in the DB, else dry-run to interventions.ndjson beside it)")


def _table(rows: list[dict]) -> str:
    cols = ("id", "tenant", "status", "step", "opened", "closed", "outcome", "mechanism", "max_risk",
            "actions")
    lines = ["  ".join(cols)]
    for r in rows:
        lines.append("  ".join("-" if r[c] is None else f"{r[c]:.3f}" if isinstance(r[c], float)
                               else str(r[c]) for c in cols))
    return "\n".join(lines)


def incident_main(a: argparse.Namespace) -> int:
    """``aura incident list | show ID | replay ID --from STEP | approve ID [--reject]``."""
    if not os.path.exists(a.db):
        raise FileNotFoundError(f"no checkpoint DB at {a.db}")
    saver = open_saver(a.db)
    if a.incident_command == "list":
        rows = incidents(saver)
        print(json.dumps(rows, indent=1) if a.json else _table(rows))
        return 0
    if a.incident_command == "show":
        print(json.dumps(show(saver, a.id), indent=1))
        return 0
    from pipelines.incidents.actuator import build_actuator
    from pipelines.incidents.playbook import Playbook
    from pipelines.incidents.workflow import IncidentWorkflow

    v = values(saver, a.id)
    if not v:
        raise ValueError(f"no incident {a.id}")
    if a.incident_command == "approve":
        from pipelines.alerts.workflow_feed import default_actuator, make_actuator, stored_actuator

        out_dir = os.path.dirname(os.path.abspath(a.db))
        actuator = make_actuator(a.actuator or stored_actuator(a.db) or default_actuator(out_dir), out_dir)[0]
    else:
        actuator = build_actuator(a.actuator)
    with writer_lock(a.db):
        wf = IncidentWorkflow(a.db, actuator, Playbook(**v["playbook"]), approve_above=v["approve_above"])
        try:
            if a.incident_command == "approve":
                by = a.by or os.environ.get("USER") or "cli"
                done = wf.approve(a.id, not a.reject, by)
                out = {"incident": a.id, "approved": not a.reject, "by": by,
                       "deliveries": [asdict(d) for d in done], "step": values(saver, a.id).get("route")}
            else:
                out = {"replayed_from": a.from_step, **wf.replay(a.id, a.from_step)}
        finally:
            actuator.close()
    print(json.dumps(out, indent=1))
    return 0
