"""Incident records on disk: ``<out>/incidents/tenant=<t>/<id>.json``, written atomically.

A record is ``Incident.to_dict()`` plus an ``alert`` block (what was last sent to the sinks:
labels, state, startsAt, times) and the ``events`` delivered for it. The readers are what the
service's ``/v1/tenants/{tenant}/incidents[/{id}]`` routes answer with.
"""

from __future__ import annotations

import json
import os
import re
import uuid

INCIDENTS = "incidents"
_ID = re.compile(r"^inc-\d{1,20}$")
_TENANT = re.compile(r"^[^/\\\x00]{1,200}$")


def _check(tenant: str, incident_id: str | None = None) -> None:
    if not _TENANT.match(tenant) or tenant in (".", ".."):
        raise ValueError(f"bad tenant name {tenant!r}")
    if incident_id is not None and not _ID.match(incident_id):
        raise ValueError(f"bad incident id {incident_id!r} (expected inc-<window start ms>)")


def incident_dir(out_dir: str, tenant: str) -> str:
    _check(tenant)
    return os.path.join(out_dir, INCIDENTS, f"tenant={tenant}")


def write_incident(out_dir: str, record: dict) -> str:
    """Writes (replaces) one record; its path."""
    _check(record["tenant"], record["id"])
    d = incident_dir(out_dir, record["tenant"])
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{record['id']}.json")
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def get_incident(out_dir: str, tenant: str, incident_id: str) -> dict | None:
    """One full record, or None when there is none (ValueError on a malformed tenant or id)."""
    _check(tenant, incident_id)
    try:
        with open(os.path.join(incident_dir(out_dir, tenant), f"{incident_id}.json")) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def list_incidents(out_dir: str, tenant: str, status: str | None = None, limit: int | None = None,
                   timeline: bool = False) -> list[dict]:
    """A tenant's incidents, newest first (by opening window); ``status`` open | resolved |
    withdrawn filters; the per-window timeline only with ``timeline=True``."""
    d = incident_dir(out_dir, tenant)
    out = []
    try:
        names = [n for n in os.listdir(d) if n.endswith(".json") and _ID.match(n[:-5])]
    except FileNotFoundError:
        return out
    for name in names:
        try:
            with open(os.path.join(d, name)) as fh:
                rec = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if status is None or rec.get("status") == status:
            out.append(rec if timeline else {k: v for k, v in rec.items() if k != "timeline"})
    out.sort(key=lambda r: r["opened_window"]["start"], reverse=True)
    return out[:limit] if limit is not None else out


def list_tenants(out_dir: str) -> list[str]:
    try:
        return sorted(n[len("tenant="):] for n in os.listdir(os.path.join(out_dir, INCIDENTS))
                      if n.startswith("tenant="))
    except FileNotFoundError:
        return []


def all_incidents(out_dir: str) -> list[dict]:
    """Every record of every tenant (the service reloads its delivery state from these)."""
    return [r for t in list_tenants(out_dir) for r in list_incidents(out_dir, t, timeline=True)]
