"""Arrow schemas matching the JSON contracts: telemetry (Parquet input), window snapshots
and dead letters (outputs)."""

from __future__ import annotations

import pyarrow as pa

from schemas import TELEMETRY_SCHEMA_VERSION

# Per-agent gauges of a telemetry record, in the order of the snapshot metric matrix.
METRICS: tuple[str, ...] = (
    "latency_p50_ms", "latency_p99_ms", "error_rate", "request_count", "cpu", "memory",
    "queue_depth", "in_flight",
)
INTEGER_METRICS = frozenset({"request_count", "queue_depth", "in_flight"})

CALL_TYPE = pa.struct([
    pa.field("dst", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
    pa.field("errors", pa.int64(), nullable=False),
    pa.field("latency_ms", pa.float64(), nullable=False),
])

TELEMETRY = pa.schema(
    [
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("agent_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        *[pa.field(m, pa.int64() if m in INTEGER_METRICS else pa.float64(), nullable=False)
          for m in METRICS],
        pa.field("calls", pa.list_(CALL_TYPE), nullable=False),
    ],
    metadata={"aura.schema": f"telemetry/v{TELEMETRY_SCHEMA_VERSION}"},
)

SNAPSHOT_SCHEMA_VERSION = 1
EDGE_TYPE = pa.struct([
    pa.field("src", pa.int32(), nullable=False),
    pa.field("dst", pa.int32(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
    pa.field("errors", pa.int64(), nullable=False),
    pa.field("latency_ms", pa.float64(), nullable=False),
])

SNAPSHOT = pa.schema(
    [
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("window_start", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("window_end", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("pane_index", pa.int32(), nullable=False),
        pa.field("pane_timing", pa.string(), nullable=False),
        pa.field("n_records", pa.int64(), nullable=False),
        pa.field("n_duplicates", pa.int64(), nullable=False),
        pa.field("agents", pa.list_(pa.string()), nullable=False),
        pa.field("n_samples", pa.list_(pa.int32()), nullable=False),
        # per-agent aggregate of each metric over the window (NaN for agents that were only
        # seen as call destinations)
        *[pa.field(f"agg_{m}", pa.list_(pa.float64()), nullable=False) for m in METRICS],
        pa.field("edges", pa.list_(EDGE_TYPE), nullable=False),
        # every sample of the window, sorted by (agent, time): the per-agent series
        pa.field("sample_agent", pa.list_(pa.int32()), nullable=False),
        pa.field("sample_offset_s", pa.list_(pa.float64()), nullable=False),
        *[pa.field(f"sample_{m}", pa.list_(pa.float64()), nullable=False) for m in METRICS],
    ],
    metadata={"aura.schema": f"window_snapshot/v{SNAPSHOT_SCHEMA_VERSION}"},
)

DEAD_LETTER = pa.schema([
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("position", pa.int64(), nullable=False),
    pa.field("raw", pa.binary(), nullable=False),
])
