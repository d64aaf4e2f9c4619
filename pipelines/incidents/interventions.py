"""Interventions as data: the ``aura.intervention/v1`` contract (``schemas/intervention.v1.json``).

An intervention is one action on a fleet that acts on one *committed* verdict: it carries
the verdict's consensus certificate, and building one without a certificate is an error.
Kinds and what ``magnitude`` means for each:

- ``shed_load``: shed this fraction (0, 1] of external load at the entry agents (``targets``).
- ``retry_budget``: calls into ``targets`` may be retried at most ``magnitude`` times (0: no
  retries) - the remedy for retry amplification.
- ``circuit_breaker``: the ``links`` (caller -> callee) open; ``magnitude`` 1: callers answer
  degraded from a fallback, 0: calls on the link fail fast. Either way nobody waits on it.
- ``scale_out``: ``magnitude`` more replicas of the service of ``targets``, effective after a
  start-up delay.
- ``reroute``: callers stop sending to the failing replicas in ``targets``.
- ``rollback``: undo the earlier action ``rollback_of``.

Every action lapses ``ttl_s`` after it takes effect. Ids are deterministic (same inputs, same
id), so a replayed incident issues the same interventions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

SCHEMA = "aura.intervention/v1"
SHED_LOAD, RETRY_BUDGET, CIRCUIT_BREAKER, SCALE_OUT, REROUTE, ROLLBACK = (
    "shed_load", "retry_budget", "circuit_breaker", "scale_out", "reroute", "rollback")
KINDS = (SHED_LOAD, RETRY_BUDGET, CIRCUIT_BREAKER, SCALE_OUT, REROUTE, ROLLBACK)
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "schemas", "intervention.v1.json")


class InterventionError(ValueError):
    """An intervention that breaks the contract (the message says which rule)."""


@dataclass(frozen=True)
class Link:
    caller: str
    callee: str


@dataclass(frozen=True)
class Intervention:
    """One action on one tenant's fleet, acting on one committed verdict."""

    tenant: str
    window_start: int  # ms
    window_end: int  # ms
    probability: float
    certificate: dict | str  # the verdict's consensus QC
    kind: str
    targets: tuple[str, ...]
    magnitude: float
    ttl_s: float
    reason: str
    issued_at: float  # epoch seconds
    links: tuple[Link, ...] = ()
    band: str | None = None
    incident_id: str | None = None
    rollback_of: str | None = None
    id: str = field(default="", compare=False)

    def __post_init__(self):
        check(self)
        # always derived from the content, so dataclasses.replace() cannot carry a stale id
        object.__setattr__(self, "id", intervention_id(self))

    def to_dict(self) -> dict[str, Any]:
        verdict: dict[str, Any] = {"probability": self.probability, "certificate": self.certificate}
        if self.band is not None:
            verdict["band"] = self.band
        out = {"schema": SCHEMA, "id": self.id, "tenant": self.tenant, "incident_id": self.incident_id,
               "window_start": self.window_start, "window_end": self.window_end, "verdict": verdict,
               "kind": self.kind, "targets": list(self.targets), "magnitude": self.magnitude,
               "ttl_s": self.ttl_s, "reason": self.reason, "rollback_of": self.rollback_of,
               "issued_at": self.issued_at}
        if self.links:
            out["links"] = [asdict(x) for x in self.links]
        return out

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> Intervention:
        """Parse and check a document (schema, then the rules beyond it)."""
        validate_document(doc)
        v = doc["verdict"]
        iv = Intervention(doc["tenant"], doc["window_start"], doc["window_end"], float(v["probability"]),
                          v["certificate"], doc["kind"], tuple(doc["targets"]), float(doc["magnitude"]),
                          float(doc["ttl_s"]), doc["reason"], float(doc["issued_at"]),
                          tuple(Link(x["caller"], x["callee"]) for x in doc.get("links", [])),
                          v.get("band"), doc.get("incident_id"), doc.get("rollback_of"))
        if iv.id != doc["id"]:
            raise InterventionError(f"id {doc['id']} does not match the content (expected {iv.id})")
        return iv


def intervention_id(iv: Intervention) -> str:
    key = json.dumps([iv.tenant, iv.window_start, iv.window_end, iv.kind, list(iv.targets),
                      [[x.caller, x.callee] for x in iv.links], round(iv.magnitude, 9), iv.rollback_of,
                      iv.incident_id], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check(iv: Intervention) -> None:
    """The rules beyond the JSON schema; raises ``InterventionError`` naming the broken one."""
    if iv.kind not in KINDS:
        raise InterventionError(f"unknown kind {iv.kind!r}; known: {', '.join(KINDS)}")
    if not iv.certificate:
        raise InterventionError("an intervention acts only on a committed verdict: certificate required")
    if not 0.0 <= iv.probability <= 1.0:
        raise InterventionError(f"probability {iv.probability} outside [0, 1]")
    if iv.window_end < iv.window_start:
        raise InterventionError("window_end before window_start")
    if not iv.ttl_s > 0:
        raise InterventionError(f"ttl_s must be positive, got {iv.ttl_s}")
    if not iv.reason:
        raise InterventionError("reason required")
    m = iv.magnitude
    if iv.kind == SHED_LOAD and not 0.0 < m <= 1.0:
        raise InterventionError(f"shed_load magnitude is a fraction in (0, 1], got {m}")
    if iv.kind == RETRY_BUDGET and (m < 0 or not float(m).is_integer()):
        raise InterventionError(f"retry_budget magnitude is a whole number of retries >= 0, got {m}")
    if iv.kind == SCALE_OUT and (m < 1 or not float(m).is_integer()):
        raise InterventionError(f"scale_out magnitude is a whole number of replicas >= 1, got {m}")
    if iv.kind == CIRCUIT_BREAKER:
        if m not in (0.0, 1.0):
            raise InterventionError(
                f"circuit_breaker magnitude is 1 (degraded fallback) or 0 (fail fast), got {m}")
        if not iv.links:
            raise InterventionError("circuit_breaker needs links (caller -> callee)")
    elif iv.links:
        raise InterventionError(f"links only on circuit_breaker, not {iv.kind}")
    if (iv.kind == ROLLBACK) != (iv.rollback_of is not None):
        raise InterventionError("rollback_of is required on (and only on) a rollback")
    if iv.kind not in (ROLLBACK,) and not iv.targets:
        raise InterventionError(f"{iv.kind} needs targets")


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    with open(SCHEMA_PATH) as f:
        return jsonschema.Draft202012Validator(json.load(f))


def validate_document(doc: dict[str, Any]) -> None:
    """Raise ``InterventionError`` with the first schema violation's path and message."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "(document)"
        raise InterventionError(f"{where}: {e.message}")


def impact(iv: Intervention) -> float:
    """Share of the fleet's requests an action may cost (what approval thresholds compare):
    shedding costs its fraction; a degraded breaker or a retry budget costs little but is not
    free; scaling out and re-routing cost no requests."""
    return {SHED_LOAD: iv.magnitude, CIRCUIT_BREAKER: 0.05, RETRY_BUDGET: 0.01}.get(iv.kind, 0.0)
