"""PyFlink functions of the Flink job: row conversion, the per-tenant keyed window function
(its buffer and sequence state are Flink keyed state, so they are checkpointed), and the
dead-letter formatter."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from pipelines.flink.sql import METRIC_COLS
from pipelines.flink.window_stage import StageSpec, TenantState, WindowStage, agent_row, edge_row
from pipelines.telemetry import LATE, DeadLetter, parse_line

UNSUPPORTED = "unsupported_by_flink_sql"
_EPOCH = datetime(1970, 1, 1)


def _ms(ts: datetime) -> int:
    """Epoch ms of a window bound (Flink hands TIMESTAMP(3) in UTC as a naive datetime)."""
    return (ts.replace(tzinfo=None) - _EPOCH) // timedelta(milliseconds=1)


def element(row) -> tuple:
    """A row of the combined query -> (kind, tenant, start ms, end ms, AgentRow | EdgeRow) for
    ``a`` / ``e`` rows, ("d", dead letter JSON) for the rest."""
    kind = row["kind"]
    if kind == "d":
        return "d", dead_letter_json(row)
    if kind == "a":
        item = agent_row(row["agent"], row["et"], [row[m] for m in METRIC_COLS], row["calls"])
    else:
        item = edge_row(row["agent"], row["dst"], row["cnt"], row["err"], row["lat_w"], row["lat_sum"],
                        row["n"])
    return kind, row["tenant"], _ms(row["window_start"]), _ms(row["window_end"]), item


def is_dead(element: tuple) -> bool:
    return element[0] == "d"


def is_window(element: tuple) -> bool:
    return element[0] != "d"


def dead_text(element: tuple) -> str:
    return element[1]


def dead_letter_json(row) -> str:
    """A row the SQL did not window -> dead letter as one JSON line (reason from the
    contract's validator; ``late`` when its windows had fired)."""
    raw = row["line"].encode("utf-8")
    source = row["path"] or "?"
    if row["late"]:
        dead = DeadLetter(LATE, "every window of its event time had fired (watermark passed)", source, -1,
                          raw)
    else:
        out = parse_line(raw.rstrip(b"\r"), source, -1)
        dead = out if isinstance(out, DeadLetter) else DeadLetter(
            UNSUPPORTED, "valid by the contract but not in the form the Flink SQL fast path parses",
            source, -1, raw)
    return orjson.dumps(dead.to_dict()).decode()


class TenantWindows(KeyedProcessFunction):
    """Keyed by tenant: buffers a window's aggregate rows until the watermark passes its end
    (an event-time timer), then runs ``WindowStage`` with the tenant's sequence state."""

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
        ctx.timer_service().register_event_time_timer(value[3] - 1)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        end = timestamp + 1
        mine, rest = [], []
        for v in self.rows.get() or []:
            (mine if v[3] == end else rest).append(v)
        self.rows.clear()
        if rest:
            self.rows.add_all(rest)
        if not mine:
            return
        state = self.state.value() or TenantState()
        agents = [v[4] for v in mine if v[0] == "a"]
        edges = [v[4] for v in mine if v[0] == "e"]
        ledger = self.stage.process(ctx.get_current_key(), mine[0][2], end, agents, edges, state)
        self.state.update(state)
        yield orjson.dumps({k: ledger[k] for k in ("tenant", "window_start", "n_fresh")}).decode()
