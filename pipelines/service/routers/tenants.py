"""Reads per tenant: the latest committed verdict (with its status), windows, incidents and
agents."""

from __future__ import annotations

import re
from datetime import datetime

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from pipelines.service import outputs
from pipelines.service.models import AgentView, Problem, Verdict, Windows
from schemas import tenant_pattern

router = APIRouter(prefix="/v1/tenants/{tenant}", tags=["tenants"])
_TENANT = re.compile(tenant_pattern())
_404 = {404: {"model": Problem}, 400: {"model": Problem}}


def _state(request: Request, tenant: str):
    if not _TENANT.fullmatch(tenant):
        raise HTTPException(400, f"tenant {tenant[:80]!r} does not match {_TENANT.pattern}")
    return request.app.state.aura


def _when(text: str | None, name: str) -> int | None:
    """Epoch milliseconds or an ISO 8601 date-time with an offset -> epoch ms."""
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise HTTPException(400, f"{name}: give epoch milliseconds or an ISO 8601 date-time, "
                            f"got {text[:60]!r}") from err
    if t.tzinfo is None:
        raise HTTPException(400, f"{name}: the date-time needs a UTC offset (e.g. Z), got {text[:60]!r}")
    return int(t.timestamp() * 1000)


@router.get("/risk", response_model=Verdict, responses=_404)
async def risk(request: Request, tenant: str) -> Verdict:
    """The tenant's latest committed verdict with its quorum certificate and status: whether
    the tenant is still calibrating, or the verdict is out of distribution (not trusted)."""
    state = _state(request, tenant)
    v = await run_in_threadpool(outputs.latest_verdict, state.paths.run, tenant, state.run.consensus)
    if v is None:
        raise HTTPException(404, f"no committed verdict for tenant {tenant!r} yet")
    return Verdict(tenant=tenant, band=state.bands.band(v["probability"]),
                   committed=v["certificate"] is not None, **{**v, **outputs.status_view(v["status"])})


@router.get("/windows", response_model=Windows, responses=_404)
async def windows(request: Request, tenant: str,
                  start: str | None = Query(None, alias="from",
                                            description="epoch ms or ISO 8601, inclusive"),
                  end: str | None = Query(None, alias="to", description="epoch ms or ISO 8601, exclusive"),
                  limit: int = Query(500, ge=1, le=5000)) -> Windows:
    """The tenant's windows (newest ``limit`` in the range, oldest first) with the prediction
    and the headline features."""
    state = _state(request, tenant)
    lo, hi = _when(start, "from"), _when(end, "to")
    if lo is not None and hi is not None and hi <= lo:
        raise HTTPException(400, f"'to' ({hi}) must be after 'from' ({lo})")
    if tenant not in outputs.tenants(state.paths.run):
        raise HTTPException(404, f"no windows for tenant {tenant!r} yet")
    rows = await run_in_threadpool(outputs.windows, state.paths.run, tenant, lo, hi, limit)
    return Windows(tenant=tenant, windows=rows)


@router.get("/agents/{agent}", response_model=AgentView, responses=_404)
async def agent(request: Request, tenant: str, agent: str) -> AgentView:
    """An agent's health and its callers and callees: from the graph when the service runs one,
    else from the latest window snapshot that has the agent."""
    state = _state(request, tenant)
    found = await run_in_threadpool(_agent, state, tenant, agent)
    if found is None:
        raise HTTPException(404, f"agent {agent[:80]!r} of tenant {tenant!r} not seen")
    return found


def _agent(state, tenant: str, agent: str) -> AgentView | None:
    driver = state.runtime.graph_driver() if state.runtime is not None else None
    if driver is not None:
        from pipelines.graph import query

        g = query.agent(driver, state.run.graph_database or "neo4j", tenant, agent)
        if g is not None:
            props = dict(g["agent"])
            metrics = {k: props.pop(k) for k in list(props) if k not in ("key", "tenant", "id")}
            return AgentView(tenant=tenant, agent=agent, source="graph",
                             window_start_ms=metrics.get("last_window"), metrics=metrics,
                             callers=g["callers"], callees=g["callees"])
    snap = outputs.latest_agent(state.paths.run, tenant, agent)
    if snap is None:
        return None
    return AgentView(tenant=tenant, agent=agent, source="snapshot", **snap)
