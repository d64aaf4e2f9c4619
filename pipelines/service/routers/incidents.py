"""Incidents: what each alert opened, its timeline and how it ended."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from pipelines.service.models import Problem
from pipelines.service.routers.tenants import _state

router = APIRouter(prefix="/v1/tenants/{tenant}/incidents", tags=["incidents"])


@router.get("", responses={400: {"model": Problem}})
async def list_incidents(request: Request, tenant: str,
                         status: str | None = Query(None, pattern="^(open|resolved|withdrawn)$"),
                         limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    """The tenant's incidents, newest first (without their per-window timelines)."""
    from pipelines.alerts import incidents as store

    state = _state(request, tenant)
    items = await run_in_threadpool(store.list_incidents, state.paths.run, tenant, status, limit)
    return {"tenant": tenant, "incidents": items}


@router.get("/{incident_id}", responses={404: {"model": Problem}, 400: {"model": Problem}})
async def get_incident(request: Request, tenant: str, incident_id: str) -> dict[str, Any]:
    """One incident with its timeline."""
    from pipelines.alerts import incidents as store

    state = _state(request, tenant)
    try:
        found = await run_in_threadpool(store.get_incident, state.paths.run, tenant, incident_id)
    except ValueError as err:  # not an incident id (inc-<window start ms>)
        raise HTTPException(404, str(err)) from err
    if found is None:
        raise HTTPException(404, f"no incident {incident_id[:80]!r} for tenant {tenant!r}")
    return found
