"""PyFlink functions of the Flink job: row conversion, the per-tenant keyed window function
(its buffer and sequence state are Flink keyed state, so they are checkpointed), and the
dead-letter formatter."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from pipelines.flink.window_stage import StageSpec, TenantState, WindowStage
from pipelines.telemetry import LATE, DeadLetter, parse_line

UNSUPPORTED = "unsupported_by_flink_sql"
_EPOCH = datetime(1970, 1, 1)


def _ms(ts: datetime) -> int:
    """Epoch ms of a window bound (Flink hands TIMESTAMP(3) in UTC as a naive datetime)."""
    return (ts.replace(tzinfo=None) - _EPOCH) // timedelta(milliseconds=1)


def element(row) -> tuple:
    """A window-chunk row of the combined query -> (tenant, start ms, end ms, packed records)."""
    return row["tenant"], _ms(row["window_start"]), _ms(row["window_end"]), list(row["recs"])


def dead_letter_json(row) -> str:
    """A row the SQL did not window -> dead letter as one JSON line (reason from the
    contract's validator; ``late`` when its windows had fired)."""
    raw = bytes(row["line"]).rstrip(b"\r")  # the line's bytes, as Beam's reader gives them
    source = row["path"] or "?"
    if row["late"]:
        dead = DeadLetter(LATE, "every window of its event time had fired (watermark passed)", source, -1,
                          raw)
    else:
        out = parse_line(raw, source, -1)
        dead = out if isinstance(out, DeadLetter) else DeadLetter(
            UNSUPPORTED, "valid by the contract but not in the form the Flink SQL fast path parses",
            source, -1, raw)
    return orjson.dumps(dead.to_dict()).decode()


class TenantWindows(KeyedProcessFunction):
    """Keyed by tenant: buffers a window's chunks (a few per window) until the watermark
    passes its end (an event-time timer), then runs ``WindowStage`` with the tenant's
    sequence state."""

    def __init__(self, spec: StageSpec):
        self.spec = spec

    def open(self, runtime_context: RuntimeContext):
        pickled = Types.PICKLED_BYTE_ARRAY()
        self.rows = runtime_context.get_list_state(ListStateDescriptor("rows", pickled))
        self.state = runtime_context.get_state(ValueStateDescriptor("sequence", pickled))
        self.stage = WindowStage(self.spec)

    def close(self):
        stage = getattr(self, "stage", None)
        if stage is not None:
            stage.close()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        self.rows.add(value)
        ctx.timer_service().register_event_time_timer(value[2] - 1)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        end = timestamp + 1
        mine, rest = [], []
        for v in self.rows.get() or []:
            (mine if v[2] == end else rest).append(v)
        self.rows.clear()
        if rest:
            self.rows.add_all(rest)
        if not mine:
            return
        state = self.state.value() or TenantState()
        recs = [r for v in mine for r in v[3]]
        ledger = self.stage.process(ctx.get_current_key(), mine[0][1], end, recs, state)
        self.state.update(state)
        yield orjson.dumps({k: ledger[k] for k in ("tenant", "window_start", "n_fresh")}).decode()
