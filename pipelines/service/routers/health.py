"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from pipelines.service.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> Response:
    """Ready when the spool worker and the streaming job run, the graph answers a query and the
    model loaded; 503 names what is not."""
    state = request.app.state.aura
    checks = {"model": state.model_loaded}
    if state.runtime is not None:
        checks.update(await run_in_threadpool(state.runtime.checks))
    ok = all(checks.values())
    return JSONResponse(Health(status="ready" if ok else "not ready", checks=checks).model_dump(),
                        200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry = request.app.state.aura.metrics.registry
    return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)
