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
