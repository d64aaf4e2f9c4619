"""PyFlink functions of the Flink job: the per-tenant keyed window function (its sequence
state is Flink keyed state, so it is checkpointed) and the dead-letter formatter."""

from __future__ import annotations

import orjson
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from pipelines import observe
from pipelines.flink.window_stage import StageSpec, TenantState, WindowStage
from pipelines.telemetry import LATE, DeadLetter, parse_line

UNSUPPORTED = "unsupported_by_flink_sql"


def dead_letter_json(row) -> str:
    """A row that is not windowed (line, path, late) -> dead letter as one JSON line (reason
    from the contract's validator; ``late`` when its windows had fired for its tenant)."""
    raw = bytes(row["line"]).rstrip(b"\r")  # the line's bytes, as Beam's reader gives them
    source = row["path"] or "?"
    if row["late"]:
        dead = DeadLetter(LATE, "every window of its event time had fired (watermark passed)", source, -1,
                          raw)
    else:
        out = parse_line(raw, source, -1)
        dead = out if isinstance(out, DeadLetter) else DeadLetter(
            UNSUPPORTED, "valid by the contract but not in the form the Flink job's JVM parser reads",
            source, -1, raw)
    observe.dead_lettered(observe.dead_tenant(raw), dead.reason)
    return orjson.dumps(dead.to_dict()).decode()


class TenantWindows(KeyedProcessFunction):
    """Keyed by tenant (on the JVM): each element is one closed window, (start ms, end ms,
    heads, meta) from ``WindowRows``. The JVM's ``TenantWindower`` emits a window once its
    tenant's watermark has passed its end, one row per (tenant, window), in window order, so
    it is processed on arrival with the tenant's sequence state (Flink keyed state, checkpointed)."""

    def __init__(self, spec: StageSpec):
        self.spec = spec

    def open(self, runtime_context: RuntimeContext):
        self.state = runtime_context.get_state(ValueStateDescriptor("sequence", Types.PICKLED_BYTE_ARRAY()))
        self.stage = WindowStage(self.spec)

    def close(self):
        stage = getattr(self, "stage", None)
        if stage is not None:
            stage.close()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        start, end, heads, meta = value
        state = self.state.value() or TenantState()
        self.stage.process(ctx.get_current_key(), start, end, heads, meta, state)
        self.state.update(state)  # nothing is emitted: the outputs are files
