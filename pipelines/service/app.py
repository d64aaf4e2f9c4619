"""``aura api``: one FastAPI application - OTLP and native telemetry in; risk, windows,
incidents and agents out; health and metrics - with the spool worker, the streaming job,
the graph server and the alert service running beside it (``pipelines.service.runtime``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.config import ApiConfig, RunConfig
from pipelines.inference import DEFAULT_MODEL_DIR
from pipelines.logs import service_log
from pipelines.service import outputs
from pipelines.service.fleet_metrics import FleetMetrics, landing_backlog_family
from pipelines.service.metrics import (
    ServiceMetrics,
    ledger_families,
    reset_metrics_dir,
    restart_families,
    risk_family,
)
from pipelines.service.models import Problem
from pipelines.service.routers import dashboard, health, incidents, ingest, tenants
from pipelines.service.runtime import ServicePaths, ServiceRuntime
from pipelines.service.spool import Spool
from pipelines.service.spool_worker import read_ledger

_REASONS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 503: "unavailable"}


@dataclass
class ServiceState:
    """What the routers share (``app.state.aura``)."""

    api: ApiConfig
    run: RunConfig
    paths: ServicePaths
    spool: Spool
    metrics: ServiceMetrics
    bands: object
    model_loaded: bool
    runtime: ServiceRuntime | None = None
    drained: bool = False  # shut down with everything accepted processed (the exit code says so)


def create_app(api: ApiConfig, run: RunConfig, start_runtime: bool = True,
               log=service_log) -> FastAPI:
    """The application. ``start_runtime`` off: handlers only (tests of the HTTP surface; the
    spool is then read by whoever runs the worker)."""
    paths = ServicePaths(api.data_dir).make()
    model_loaded = False
    if run.predict:
        run.predictor_spec()  # loads the model: a clear error now, not in the job
        model_loaded = True
    state = ServiceState(api, run, paths, Spool(paths.spool), ServiceMetrics(), run.bands(),
                         model_loaded or not run.predict)
    if start_runtime:  # the job's metrics start from zero with the service (like the service's own)
        reset_metrics_dir(paths.metrics)
    state.metrics.add_job_metrics(paths.metrics)
    state.metrics.add_source(lambda: ledger_families(read_ledger(paths.ingest)))
    state.metrics.add_source(lambda: landing_backlog_family(paths.landing))
    fleet = FleetMetrics(paths.run, api.metrics_top_agents, run.model_dir or DEFAULT_MODEL_DIR,
                         api.backtest_report, lambda: state.runtime.alerts.service.open_by_tenant()
                         if state.runtime is not None and state.runtime.alerts is not None else {})
    state.metrics.add_source(fleet.collect)
    state.metrics.add_source(lambda: risk_family(
        {t: outputs.latest_verdict(paths.run, t, run.consensus) for t in outputs.tenants(paths.run)}))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        grpc_server = None
        if start_runtime:
            state.runtime = ServiceRuntime(api, run, log).start()
            state.metrics.add_source(lambda: restart_families(state.runtime.restarts))
            if state.runtime.alerts is not None:
                state.metrics.add_source(state.runtime.alerts.metric_families)
            if api.grpc_port is not None:
                from pipelines.service.otlp_grpc import serve_grpc

                grpc_server, bound = serve_grpc(state, api.host, api.grpc_port)
                log(f"aura api: OTLP/gRPC on {api.host}:{bound}")
        try:
            yield
        finally:
            if grpc_server is not None:
                grpc_server.stop(2.0).wait()
            state.drained = state.runtime.stop() if state.runtime is not None else True

    app = FastAPI(title="AURA", version="1", lifespan=lifespan,
                  description="Early warning for cascading failures in fleets of agents: OpenTelemetry "
                              "traces in, committed risk verdicts, incidents and alerts out.")
    app.state.aura = state

    @app.exception_handler(StarletteHTTPException)
    async def problem(_request, exc: StarletteHTTPException) -> JSONResponse:
        """Every error as a Problem: a reason code and a readable detail."""
        reason = _REASONS.get(exc.status_code, "error")
        return JSONResponse(Problem(error=reason, detail=str(exc.detail)).model_dump(), exc.status_code,
                            headers=getattr(exc, "headers", None))

    for r in (ingest.router, tenants.router, incidents.router, health.router, dashboard.router):
        app.include_router(r)
    return app
