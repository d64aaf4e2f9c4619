"""Typed request and response models of the service (the OpenAPI docs are built from them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """An error answer: what went wrong and why (4xx/5xx)."""

    error: str = Field(description="a short reason code, e.g. bad_protobuf, too_large, backlog_full")
    detail: str


class TelemetryAccepted(BaseModel):
    lines: int = Field(description="NDJSON lines accepted; each becomes a record or a dead letter")
    file: str = Field(description="the landed file the streaming job reads")


class Verdict(BaseModel):
    tenant: str
    window_start_ms: int
    window_end_ms: int
    pane: int
    probability: float
    band: str = Field(description="risk band of the probability (low | elevated | high)")
    horizon_s: float
    history_windows: int
    feature_version: int
    predictor: str
    committed: bool = Field(description="certified by the validators' quorum")
    certificate: dict[str, Any] | None = Field(
        description="the quorum certificate (chain, view, signers ...)")
    status: str = Field("ok", description="ok | calibrating (the tenant's baseline is not complete yet) | "
                        "out_of_distribution (input far outside what the model was trained on); a verdict "
                        "that is not ok is not trusted and opens no incident")
    calibration: str = Field("complete", description="calibrating while the tenant's baseline of its first "
                             "windows is incomplete, then complete")
    note: str | None = Field(None, description="why this verdict is not trusted, in words (null when ok)")


class WindowRow(BaseModel):
    window_start_ms: int
    window_end_ms: int
    pane: int
    records: int
    agents: int
    probability: float | None
    committed: bool
    status: str | None = Field(None, description="the verdict's status (ok | calibrating | "
                               "out_of_distribution); null without a prediction")
    features: dict[str, float | None] | None


class Windows(BaseModel):
    tenant: str
    windows: list[WindowRow]


class Edge(BaseModel):
    agent: str
    calls: float | None = None
    errors: float | None = None
    latency_ms: float | None = None


class AgentView(BaseModel):
    tenant: str
    agent: str
    source: str = Field(description="graph (the Bolt graph) or snapshot (the latest window's snapshot file)")
    window_start_ms: int | None
    metrics: dict[str, Any]
    callers: list[Edge]
    callees: list[Edge]


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = {}


# -- the dashboard page's data (pipelines.service.dashboard_data) ------------------------------
class DashboardGraph(BaseModel):
    """The latest window's call graph, one array per field (index i is agent i)."""

    window_start_ms: int | None = Field(description="null: no snapshot yet")
    window_end_ms: int | None
    pane: int | None
    agents: list[str]
    x: list[float] = Field(description="layout in [0, 1]: layers of the call graph left to right")
    y: list[float]
    health: list[float] = Field(description="0 healthy .. 1 unhealthy: the worse of error rate / 0.5 and p99 "
                                "latency / timeout (the features' unhealthy cut); -1: not reporting")
    error_rate: list[float | None]
    latency_p99_ms: list[float | None]
    edges: list[int] = Field(description="caller, callee agent indices, flat: [src0, dst0, src1, dst1, ...]")
    failing_edges: list[int] = Field(description="edges (by position) failing at least half their calls")
    implicated: list[int] = Field(description="agent indices the open incident implicates (its localisation)")
    implicated_source: str | None = Field(None, description="workflow (localise step) | alert (the alert's "
                                          "implicated agents) | null: no open incident")


class DashboardTimeline(BaseModel):
    """The tenant's latest windows, oldest first, one array per field."""

    window_ms: int | None = Field(description="window length")
    start_ms: list[int]
    probability: list[float | None] = Field(description="null: no prediction (yet)")
    committed: list[bool]
    status: list[str | None] = Field(description="ok | calibrating | out_of_distribution; "
                                     "null: no prediction")
    h0: list[float | None] = Field(description="stress_h0_betti_t0.5 (components)")
    h1: list[float | None] = Field(description="stress_h1_betti_t0.5 (loops)")


class DashboardMarker(BaseModel):
    at_ms: int
    kind: str
    label: str


class DashboardMarkers(BaseModel):
    warnings: list[DashboardMarker] = Field(description="committed, trusted verdicts in the top risk band")
    alerts: list[DashboardMarker] = Field(description="alerts (incidents of the alert service) opened")
    interventions: list[DashboardMarker] = Field(description="interventions of the incident workflow")
    onsets: list[DashboardMarker] = Field(description="labelled cascade onsets")
    onsets_known: bool = Field(description="false: no labels for the tenant, so no onsets can be shown")
    onsets_note: str


class DashboardIncident(BaseModel):
    id: str
    source: str = Field(description="workflow (pipelines.incidents) | alert (no workflow record)")
    status: str
    step: str | None = Field(description="the workflow step the incident is at (null without a workflow)")
    steps: list[str]
    opened_ms: int | None
    closed_ms: int | None = None
    mechanism: str | None
    max_risk: float | None
    outcome: str | None = None
    escalation: int = 0
    targets: list[str] = Field(description="implicated agents, most implicated first")
    waiting: list[str] = Field(default_factory=list, description="actions waiting for approval")
    actions: int = 0
    recent_steps: list[str] = Field(default_factory=list, description="its latest timeline entries")


class DashboardPast(BaseModel):
    ranking: str = Field(description="recent: newest first (similarity ranking by topology is not built yet)")
    note: str
    incidents: list[DashboardIncident]


class Dashboard(BaseModel):
    """Everything the dashboard page draws for one tenant."""

    tenant: str
    tenants: list[str]
    version: str = Field(description="changes whenever any input changes (the response's ETag)")
    bands: list[float] = Field(description="risk band cut points")
    band_names: list[str]
    graph: DashboardGraph
    timeline: DashboardTimeline
    markers: DashboardMarkers
    incident: DashboardIncident | None
    past: DashboardPast
