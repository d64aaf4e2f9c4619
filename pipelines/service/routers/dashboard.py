"""The dashboard page served by the service itself: ``GET /dashboard`` (HTML), its hand-written
script and style under ``/dashboard/static/`` (shipped in the package: no CDN, no build
step), and the data it polls, ``GET /v1/tenants/{tenant}/dashboard`` (ETag: a poll with
``If-None-Match`` answers 304 until something changed; ``pipelines.service.dashboard_data``)."""

from __future__ import annotations

import html
import os
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from pipelines.service import outputs
from pipelines.service.dashboard_data import LABELS_FILE, TIMELINE_WINDOWS, Sources, dashboard_json, version
from pipelines.service.models import Dashboard, Problem
from pipelines.service.routers.tenants import _TENANT, _state

router = APIRouter(tags=["dashboard"])
STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
NO_CACHE = {"Cache-Control": "no-cache"}


def sources(state) -> Sources:
    """Where the app's dashboard inputs are (``state``: the app's ``ServiceState``)."""
    return Sources(state.paths.run, os.path.join(state.paths.root, LABELS_FILE), tuple(state.bands.cuts),
                   tuple(state.bands.names), float(state.run.timeout_ms))


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request, tenant: str | None = None) -> HTMLResponse:
    """The page, opened on ``tenant`` (default: the first tenant with windows)."""
    if tenant is not None and not _TENANT.fullmatch(tenant):
        raise HTTPException(400, f"tenant {tenant[:80]!r} does not match {_TENANT.pattern}")
    known = outputs.tenants(request.app.state.aura.paths.run)
    chosen = tenant or (known[0] if known else "")
    text = (STATIC / "dashboard.html").read_text().replace("__AURA_TENANT__", html.escape(chosen, quote=True))
    return HTMLResponse(text, headers=NO_CACHE)


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no dashboard asset {name[:80]!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=NO_CACHE)


@router.get("/dashboard/tenants", include_in_schema=False)
async def tenant_names(request: Request) -> dict[str, list[str]]:
    """The tenants with windows (the page waits on this until there is one)."""
    return {"tenants": outputs.tenants(request.app.state.aura.paths.run)}


@router.get("/v1/tenants/{tenant}/dashboard", response_model=Dashboard,
            responses={304: {"description": "unchanged since the ETag given in If-None-Match"},
                       400: {"model": Problem}, 404: {"model": Problem}})
async def dashboard(request: Request, tenant: str,
                    windows: int = Query(TIMELINE_WINDOWS, ge=1, le=5000,
                                         description="the latest windows on the timeline")) -> Response:
    """What the dashboard page draws: the latest window's call graph (agents by health, the open
    incident's implicated agents), the risk timeline with its markers, Betti numbers, the open
    incident at its workflow step and the tenant's recent incidents."""
    state = _state(request, tenant)
    if tenant not in outputs.tenants(state.paths.run):
        raise HTTPException(404, f"no windows for tenant {tenant!r} yet")
    src = sources(state)
    etag = f'"{version(src, tenant, windows)}"'
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={"ETag": etag, **NO_CACHE})
    p = await run_in_threadpool(dashboard_json, src, tenant, windows)
    headers = {"ETag": f'"{p.version}"', "Vary": "Accept-Encoding", **NO_CACHE}
    if "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = p.gzip, "gzip"
    else:
        body = p.json
    return Response(body, media_type="application/json", headers=headers)
