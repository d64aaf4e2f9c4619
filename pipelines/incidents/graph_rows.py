"""An incident of the workflow as graph rows: ``(:Incident)-[:TOOK]->(:Action)-[:TOUCHED]->(:Agent)``.

Keys: an Incident by its id (``inc-<tenant>-<window start ms>``), an Action by its
intervention id (deterministic), an Agent by ``tenant/agent_id`` as the graph sink keys it.
The Cypher is ``INCIDENT`` / ``INCIDENT_ACTIONS`` in ``pipelines/graph/statements.py`` (so a
spilled incident batch replays like any other); rows are idempotent MERGEs, latest values win.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pipelines.graph.rows import agent_key

log = logging.getLogger(__name__)


def _touched(tenant: str, action: Mapping[str, Any]) -> list[dict]:
    """The agents an action acts on: its targets, and both ends of a breaker's links."""
    names = [*action.get("targets", ())]
    for link in action.get("links", ()):
        names += [link["caller"], link["callee"]]
    return [{"key": agent_key(tenant, a), "id": a} for a in dict.fromkeys(names)]


def incident_rows(state: Mapping[str, Any]) -> list[tuple[str, list[dict]]]:
    """(statement name, rows) steps for an incident state (``pipelines.incidents.workflow``)."""
    tenant = state["tenant"]
    inc = {"id": state["id"], "props": {
        "tenant": tenant, "opened": state.get("opened"), "closed": state.get("closed"),
        "status": state.get("status"), "outcome": state.get("outcome"),
        "mechanism": state.get("mechanism"), "max_risk": state.get("max_risk")}}
    keep = ("kind", "magnitude", "ttl_s", "status", "reason", "issued_at", "window_start", "rollback_of")
    actions = [{"incident": state["id"], "id": a["id"], "tenant": tenant, "agents": _touched(tenant, a),
                "props": {"tenant": tenant, **{k: a.get(k) for k in keep}}}
               for a in state.get("actions", ())]
    return [("incident", [inc]), ("incident_actions", actions)]


def write_incident(sink: Any, state: Mapping[str, Any]) -> bool:
    """Deliver the rows through a ``GraphSink`` (retries, spill); False when not written now."""
    from pipelines.graph.sink import Batch

    batch = Batch("incident", state["tenant"], int(state.get("opened") or 0), 0, incident_rows(state))
    try:
        return bool(sink.deliver(batch))
    except Exception as err:  # noqa: BLE001 - the incident goes on; the sink keeps its own record
        log.warning("incident %s: graph write failed: %s", state["id"], err)
        return False
