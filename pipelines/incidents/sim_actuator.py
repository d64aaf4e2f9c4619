"""The simulator's actuator: the closed-loop backtest's simulated fleet obeys interventions.

Agent ids become service or agent indices of the ``Scenario``; an intervention takes effect
``actuation_delay_s`` after it is issued (the time an orchestrator takes to act), and a
rollback stops the action it undoes at that time. Targets the fleet does not have (an
unknown agent, a link nobody calls on, shedding at a service without external load) make a
dead letter with the reason, never an exception.
"""

from __future__ import annotations

from pipelines.incidents.actuator import APPLIED, DEAD_LETTER, Actuator, Delivery
from pipelines.incidents.interventions import CIRCUIT_BREAKER, REROUTE, ROLLBACK, SHED_LOAD, Intervention
from pipelines.simulation.actions import Action
from pipelines.simulation.scenario import Scenario


class SimulatorActuator(Actuator):
    """Schedules each intervention as an ``Action`` on a running ``Scenario``."""

    name = "simulator"

    def __init__(self, scenario: Scenario, actuation_delay_s: float = 5.0) -> None:
        self.scenario = scenario
        self.actuation_delay_s = actuation_delay_s

    def act(self, iv: Intervention, now_s: float) -> Delivery:
        """Apply ``iv`` from ``now_s`` (epoch seconds) + the actuation delay."""
        at_s = now_s - self.scenario.cfg.start_epoch_s + self.actuation_delay_s
        if iv.kind == ROLLBACK:
            return self._roll_back(iv, at_s)
        if iv.id in self.scenario.book:  # a replayed intervention: already in force
            return self._delivery(iv, APPLIED, "already applied")
        try:
            self.scenario.act(self.action(iv, at_s))
        except KeyError as e:
            return self._delivery(iv, DEAD_LETTER, f"no agent {e.args[0]} in the simulated fleet")
        except ValueError as e:
            return self._delivery(iv, DEAD_LETTER, str(e))
        return self._delivery(iv, APPLIED, f"{iv.kind} from t={at_s:.1f}s for {iv.ttl_s:g}s")

    def _roll_back(self, iv: Intervention, at_s: float) -> Delivery:
        try:
            self.scenario.cancel(str(iv.rollback_of), at_s)
        except KeyError:
            return self._delivery(iv, DEAD_LETTER, f"nothing to roll back: {iv.rollback_of} never applied")
        return self._delivery(iv, APPLIED, f"{iv.rollback_of} stopped at t={at_s:.1f}s")

    def action(self, iv: Intervention, start_s: float) -> Action:
        """The simulator action of ``iv`` (KeyError for an unknown agent, ValueError for a
        target the action cannot apply to)."""
        sc = self.scenario
        if iv.kind == REROUTE:
            return Action(iv.kind, start_s, iv.ttl_s, iv.magnitude,
                          agents=tuple(sorted({sc.agent_index(a) for a in iv.targets})), id=iv.id)
        if iv.kind == CIRCUIT_BREAKER:
            links = {(sc.service_of(x.caller), sc.service_of(x.callee)) for x in iv.links}
            return Action(iv.kind, start_s, iv.ttl_s, iv.magnitude, links=tuple(sorted(links)), id=iv.id)
        services = tuple(sorted({sc.service_of(a) for a in iv.targets}))
        if iv.kind == SHED_LOAD and not set(services) <= set(sc.entry_services()):
            outside = [a for a in iv.targets if sc.service_of(a) not in sc.entry_services()]
            raise ValueError(f"shed_load targets without external load: {', '.join(outside)}")
        return Action(iv.kind, start_s, iv.ttl_s, iv.magnitude, services=services, id=iv.id)

    def _delivery(self, iv: Intervention, status: str, detail: str) -> Delivery:
        return Delivery(iv.id, self.name, status, detail=detail)
