"""``aura testbed``: a fleet of real agent processes on loopback (LangGraph agents whose
model call is a latency model, behind HTTP, with bounded worker pools, client timeouts and
retries), traced with the OpenTelemetry SDK and exporting OTLP/HTTP; load, injected
triggers, and labels of when the fleet actually broke.

- ``spec``: ``FleetSpec`` (agents, wiring, policies, load), ``Trigger``, topologies
- ``agent``: one agent process (``python -m pipelines.testbed.agent --spec ...``)
- ``zygote``: the pre-imported parent every replica is forked from
- ``fleet``: ``Fleet``: start, run (load + triggers + outputs), stop
- ``load``: the open-loop load generator; ``onset``: breaks, onsets, the labels file
- ``cli``: ``add_testbed_args`` / ``testbed_main``
"""

from pipelines.testbed.fleet import Fleet, FleetError
from pipelines.testbed.spec import AgentConfig, FleetSpec, RetryPolicy, ServiceTime, SpecError, Trigger

__all__ = ["AgentConfig", "Fleet", "FleetError", "FleetSpec", "RetryPolicy", "ServiceTime", "SpecError",
           "Trigger"]
