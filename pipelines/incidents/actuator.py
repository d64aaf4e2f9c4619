"""The ``Actuator`` interface: where an intervention goes.

Like Beam's ``ModelHandler``, one small interface with every backend a thin class behind it:
``dry_run`` (log only; the default outside the simulator), ``webhook`` (POST to the
operator's gateway, feature-flag service or autoscaler) and ``simulator`` (the closed-loop
backtest's fleet obeys it). An actuator never raises on a failed delivery: it answers a
``Delivery`` whose status says what happened, and a backend that cannot deliver writes a
dead letter with the reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from pipelines.incidents.interventions import Intervention

APPLIED, DELIVERED, LOGGED, DEAD_LETTER = "applied", "delivered", "logged", "dead_letter"


@dataclass(frozen=True)
class Delivery:
    """What became of one intervention at one actuator."""

    intervention_id: str
    actuator: str
    status: str  # applied (simulator) | delivered (webhook 2xx) | logged (dry run) | dead_letter
    attempts: int = 1
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != DEAD_LETTER


class Actuator(ABC):
    """Carries interventions out (or hands them to whoever does)."""

    name: str = "actuator"

    @abstractmethod
    def act(self, iv: Intervention, now_s: float) -> Delivery:
        """Carry out ``iv`` at time ``now_s`` (epoch seconds; simulated time in a backtest)."""

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing open
        """Release what the backend holds (connections, files)."""


def build_actuator(spec: str, **kwargs) -> Actuator:
    """``dry-run[:PATH]`` or ``webhook:URL`` (the simulator's actuator is built by the
    closed-loop backtest around its scenario)."""
    kind, _, arg = spec.partition(":")
    if kind == "dry-run":
        from pipelines.incidents.dry_run import DryRunActuator

        return DryRunActuator(arg or None, **kwargs)
    if kind == "webhook":
        from pipelines.incidents.webhook import WebhookActuator

        if not arg:
            raise ValueError("webhook actuator needs a URL: webhook:http://host:port/path")
        return WebhookActuator(arg, **kwargs)
    raise ValueError(f"unknown actuator {spec!r}: use dry-run[:PATH] or webhook:URL")
