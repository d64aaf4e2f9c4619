"""Event-time windows and the WindowSnapshot of one (tenant, window).

Pure functions over plain data: the Beam and Flink adapters only decide *when* a window
fires; *what* it contains is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from schemas.arrow import METRICS, SNAPSHOT


def _us(t: float) -> int:
    return int(round(t * 1_000_000))


def ms(t: float) -> int:
    """Seconds -> integer milliseconds (window starts in outputs and keys)."""
    return int(round(t * 1000))


@dataclass(frozen=True)
class WindowSpec:
    """Sliding (or, with slide == size, tumbling) event-time windows aligned to the epoch."""

    size_s: float = 10.0
    slide_s: float | None = None  # None: tumbling
    allowed_lateness_s: float = 30.0

    def __post_init__(self):
        if not self.size_s > 0:
            raise ValueError(f"window size must be positive, got {self.size_s}")
        if self.slide_s is not None and not 0 < self.slide_s <= self.size_s:
            raise ValueError(f"slide must be in (0, size], got {self.slide_s}")
        if self.allowed_lateness_s < 0:
            raise ValueError("allowed lateness must be >= 0")

    @property
    def slide(self) -> float:
        return self.size_s if self.slide_s is None else self.slide_s

    def starts(self, t: float) -> list[float]:
        """Start times of every window containing event time ``t`` (earliest first).

        Computed in integer microseconds, as Beam does, so both agree to the bit."""
        t_us, size_us, slide_us = _us(t), _us(self.size_s), _us(self.slide)
        last = t_us - t_us % slide_us
        return [s / 1e6 for s in range(last, t_us - size_us, -slide_us)][::-1]

    def slice_start(self, t: float) -> float:
        """Start of the slide-aligned slice holding ``t``."""
        t_us = _us(t)
        return (t_us - t_us % _us(self.slide)) / 1e6

    def is_late(self, t: float, watermark: float) -> bool:
        """True when every window of ``t`` has expired: watermark > end + allowed lateness
        of the earliest one (Beam's rule for dropping late data)."""
        first_end = self.starts(t)[0] + self.size_s
        return watermark > first_end + self.allowed_lateness_s


def slice_batches(records: list[dict], spec: WindowSpec) -> list[tuple[tuple[str, list[dict]], float]]:
    """Group records into ((tenant, batch), slice start) elements.

    A slice is one slide-aligned interval; every record of a slice belongs to exactly the
    same windows, so an engine can window whole batches instead of single events.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        start = spec.slice_start(r["event_time"])
        groups.setdefault((r["tenant"], start), []).append(r)
    return [((tenant, batch), start) for (tenant, start), batch in sorted(groups.items())]


@dataclass
class WindowSnapshot:
    """Agents, per-agent metric matrix and weighted directed call graph of one window."""

    tenant: str
    window_start: float
    window_end: float
    agents: list[str]  # sorted: reporting agents and call destinations
    n_samples: np.ndarray  # (A,) samples per agent (0: only seen as a call destination)
    metrics: np.ndarray  # (A, M) per-agent aggregate, columns in METRICS order
    edge_src: np.ndarray  # (E,) agent index of the caller
    edge_dst: np.ndarray  # (E,) agent index of the callee
    edge_count: np.ndarray  # (E,) calls in the window
    edge_errors: np.ndarray  # (E,) failed calls in the window
    edge_latency_ms: np.ndarray  # (E,) call-weighted mean latency
    sample_agent: np.ndarray  # (K,) agent index of each sample, sorted by (agent, time)
    sample_offset_s: np.ndarray  # (K,) event time minus window start
    sample_values: np.ndarray  # (K, M)
    n_records: int  # records that fell into the window (duplicates included)
    n_duplicates: int = 0  # repeated (agent, ts) samples, kept once
    pane_index: int = 0
    pane_timing: str = "ON_TIME"
    metric_names: tuple[str, ...] = field(default=METRICS)


def build_snapshot(tenant: str, window_start: float, window_end: float,
                   records: list[dict]) -> WindowSnapshot:
    """Aggregate a window's records. The result does not depend on record order.

    Per agent, gauges are averaged over its samples and ``request_count`` is summed; a
    repeated (agent, event_time) is kept once (the smallest record by content). Calls are
    summed per (caller, callee) edge, latency weighted by call count.
    """
    def content_key(r: dict) -> tuple:  # only needed to break ties between duplicates
        return (tuple(r[m] for m in METRICS), repr(r["calls"]))

    ordered = sorted(records, key=lambda r: (r["agent_id"], r["event_time"]))
    unique: list[dict] = []
    i = 0
    while i < len(ordered):
        j = i + 1
        key = (ordered[i]["agent_id"], ordered[i]["event_time"])
        while j < len(ordered) and (ordered[j]["agent_id"], ordered[j]["event_time"]) == key:
            j += 1
        unique.append(ordered[i] if j == i + 1 else min(ordered[i:j], key=content_key))
        i = j
    names = sorted({r["agent_id"] for r in unique} | {c["dst"] for r in unique for c in r["calls"]})
    index = {a: i for i, a in enumerate(names)}
    sample_agent = np.fromiter((index[r["agent_id"]] for r in unique), np.int32, len(unique))
    sample_offset = np.fromiter((r["event_time"] - window_start for r in unique), np.float64,
                                len(unique))
    values = np.array([[r[m] for m in METRICS] for r in unique], dtype=np.float64).reshape(-1, len(METRICS))
    calls = np.array([(index[r["agent_id"]], index[c["dst"]], c["count"], c["errors"], c["latency_ms"])
                      for r in unique for c in r["calls"]], dtype=np.float64).reshape(-1, 5)
    return snapshot_from_arrays(tenant, window_start, window_end, names, sample_agent, sample_offset,
                                values, calls, len(records), len(records) - len(unique))


def snapshot_from_arrays(tenant: str, window_start: float, window_end: float, names: list[str],
                         sample_agent: np.ndarray, sample_offset: np.ndarray, values: np.ndarray,
                         calls: np.ndarray, n_records: int, n_duplicates: int) -> WindowSnapshot:
    """The aggregation step of ``build_snapshot`` over arrays of unique samples sorted by
    (agent, time): ``calls`` is (C, 5) caller index, callee index, count, errors, latency,
    in sample order. The columnar (backtest) path calls this directly."""
    n_agents, n_m = len(names), len(METRICS)
    n_samples = np.bincount(sample_agent, minlength=n_agents).astype(np.int32)
    metrics = np.full((n_agents, n_m), np.nan)
    sums = np.zeros((n_agents, n_m))
    np.add.at(sums, sample_agent, values)
    seen = n_samples > 0
    metrics[seen] = sums[seen] / n_samples[seen, None]
    rc = METRICS.index("request_count")
    metrics[seen, rc] = sums[seen, rc]

    if len(calls):
        arr = calls
        key = arr[:, 0].astype(np.int64) * max(n_agents, 1) + arr[:, 1].astype(np.int64)
        uniq, inv = np.unique(key, return_inverse=True)
        count = np.bincount(inv, arr[:, 2])
        errors = np.bincount(inv, arr[:, 3])
        lat_w = np.bincount(inv, arr[:, 2] * arr[:, 4])
        lat_plain = np.bincount(inv, arr[:, 4]) / np.bincount(inv)
        latency = np.divide(lat_w, count, out=lat_plain, where=count > 0)
        src, dst = (uniq // max(n_agents, 1)).astype(np.int32), (uniq % max(n_agents, 1)).astype(np.int32)
    else:
        src = dst = np.zeros(0, np.int32)
        count = errors = latency = np.zeros(0)
    return WindowSnapshot(
        tenant=tenant, window_start=window_start, window_end=window_end, agents=names,
        n_samples=n_samples, metrics=metrics, edge_src=src, edge_dst=dst,
        edge_count=count.astype(np.int64), edge_errors=errors.astype(np.int64),
        edge_latency_ms=latency, sample_agent=sample_agent, sample_offset_s=sample_offset,
        sample_values=values, n_records=n_records, n_duplicates=n_duplicates,
    )


def snapshots_to_table(snaps: list[WindowSnapshot]) -> pa.Table:
    """Snapshots as an Arrow table with the versioned SNAPSHOT schema."""
    cols: dict[str, list] = {name: [] for name in SNAPSHOT.names}
    for s in snaps:
        cols["tenant"].append(s.tenant)
        cols["window_start"].append(int(round(s.window_start * 1000)))
        cols["window_end"].append(int(round(s.window_end * 1000)))
        cols["pane_index"].append(s.pane_index)
        cols["pane_timing"].append(s.pane_timing)
        cols["n_records"].append(s.n_records)
        cols["n_duplicates"].append(s.n_duplicates)
        cols["agents"].append(s.agents)
        cols["n_samples"].append(s.n_samples)
        for j, m in enumerate(METRICS):
            cols[f"agg_{m}"].append(s.metrics[:, j])
            cols[f"sample_{m}"].append(s.sample_values[:, j])
        cols["edges"].append([
            {"src": int(a), "dst": int(b), "count": int(c), "errors": int(e), "latency_ms": float(lat)}
            for a, b, c, e, lat in zip(s.edge_src, s.edge_dst, s.edge_count, s.edge_errors,
                                       s.edge_latency_ms)])
        cols["sample_agent"].append(s.sample_agent)
        cols["sample_offset_s"].append(s.sample_offset_s)
    return pa.table({k: pa.array(v, type=SNAPSHOT.field(k).type) for k, v in cols.items()},
                    schema=SNAPSHOT)


def snapshots_from_table(table: pa.Table) -> list[WindowSnapshot]:
    """Inverse of ``snapshots_to_table``."""
    out = []
    for row in table.to_pylist():
        edges = row["edges"]
        out.append(WindowSnapshot(
            tenant=row["tenant"],
            window_start=row["window_start"].timestamp(),
            window_end=row["window_end"].timestamp(),
            agents=row["agents"],
            n_samples=np.asarray(row["n_samples"], np.int32),
            metrics=np.column_stack([np.asarray(row[f"agg_{m}"], float) for m in METRICS])
            if row["agents"] else np.zeros((0, len(METRICS))),
            edge_src=np.asarray([e["src"] for e in edges], np.int32),
            edge_dst=np.asarray([e["dst"] for e in edges], np.int32),
            edge_count=np.asarray([e["count"] for e in edges], np.int64),
            edge_errors=np.asarray([e["errors"] for e in edges], np.int64),
            edge_latency_ms=np.asarray([e["latency_ms"] for e in edges], float),
            sample_agent=np.asarray(row["sample_agent"], np.int32),
            sample_offset_s=np.asarray(row["sample_offset_s"], float),
            sample_values=np.column_stack([np.asarray(row[f"sample_{m}"], float) for m in METRICS])
            if row["sample_agent"] else np.zeros((0, len(METRICS))),
            n_records=row["n_records"], n_duplicates=row["n_duplicates"],
            pane_index=row["pane_index"], pane_timing=row["pane_timing"],
        ))
    return out
