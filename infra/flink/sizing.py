"""Flink sizing for AURA fleets, derived from figures measured on the 2-core dev machine.

``python infra/flink/sizing.py`` writes ``infra/flink/sizes/<size>.yaml`` (a complete
``FlinkDeployment`` per fleet size, from ``flink-deployment.yaml``) and prints the table of
``docs/SCALING.md``. tests/test_flink_sizing.py checks that regenerating yields the committed
files and table, and that every size has the capacity it claims.

Every input is in ``Measured`` with where it was measured; change a figure there, rerun, and
the manifests and the table follow. The model, per fleet of ``agents`` reporting every
``report_s``:

- events/s = agents / report_s; one slot = one core; parallelism = events/s x headroom /
  (whole-job events/s per core), the same parallelism for reader, windower and Python stage
  (slot sharing: one slot runs one subtask of each);
- Kafka partitions = 2 x parallelism (readers can double without repartitioning the topic,
  which would break per-tenant order), at least enough for the bytes per partition;
- keyed state = what the windower buffers: (window + out-of-orderness) of packed records;
  a checkpoint holds it all (hashmap, full) or the new records of one interval (RocksDB,
  incremental);
- graph rows/s = the rows a later window writes (change detection) within the graph budget.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
BASE = HERE / "flink-deployment.yaml"
SIZES_DIR = HERE / "sizes"
MB, GB = 1 << 20, 1 << 30


@dataclass(frozen=True)
class Measured:
    """Per-core figures from this machine (docs/BENCHMARKS.md, the section named per field)."""

    job_events_per_core_s: float = 47_500  # Flink job after its first window: 95-133k events/s on 2 cores,
    # low end ("Flink job ... Throughput work"): reader + parse + windows + Python stage, no graph
    python_us_per_record: float = 5.2  # TenantWindows: ~130 ms per 25,000-record window, one core
    ndjson_bytes_per_record: int = 292  # bench_flink's records (one call each)
    packed_bytes_per_record: int = 150  # TelemetryParser.pack of the same records (ParseMain)
    graph_rows_per_agent_window: float = 0.534  # later 100k-agent window: ~53,400 rows written
    graph_rows_per_server_s: float = 18_100  # embedded ArcadeDB, column path, worst of runs 2-3
    ours_graph_s_p99: float = 0.39  # our share of a 100k-agent graph write (Rust packer)


@dataclass(frozen=True)
class Plan:
    """Choices, not measurements."""

    report_s: float = 1.0  # one report per agent per second
    window_s: float = 10.0
    out_of_orderness_s: float = 5.0
    checkpoint_interval_s: float = 10.0
    headroom: float = 1.5  # run at <= 2/3 of measured capacity (replays after a restart, bursts)
    slots_per_taskmanager: int = 2  # the dev machine's shape: 2 cores
    partition_bytes_per_s: float = 10 * MB  # planning figure per Kafka partition (not measured here)
    graph_budget_s: float = 2.0  # a window's graph write must finish within this (issue 21)
    heap_overhead: float = 2.0  # JVM heap bytes per serialized state byte (hashmap backend)


SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}


def _pow2_at_least(x: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(x, 1))))


@dataclass(frozen=True)
class Size:
    """What a fleet of ``agents`` needs."""

    agents: int
    events_per_s: float
    parallelism: int
    max_parallelism: int
    taskmanagers: int
    kafka_partitions: int
    state_bytes: float
    checkpoint_full_bytes: float
    checkpoint_incremental_bytes: float
    state_backend: str
    taskmanager_memory_mb: int
    graph_rows_per_window: float
    graph_rows_per_s: float
    graph_servers: int
    max_tenant_agents: int
    capacity_events_per_s: float  # at this parallelism, from the measured per-core rate


def size(agents: int, m: Measured = Measured(), p: Plan = Plan()) -> Size:
    """The sizing of one fleet."""
    rate = agents / p.report_s
    par = max(1, math.ceil(rate * p.headroom / m.job_events_per_core_s))
    par = par if par <= 2 else p.slots_per_taskmanager * math.ceil(par / p.slots_per_taskmanager)
    bytes_s = rate * m.ndjson_bytes_per_record
    partitions = max(2 * par, math.ceil(bytes_s * p.headroom / p.partition_bytes_per_s))
    state = rate * (p.window_s + p.out_of_orderness_s) * m.packed_bytes_per_record
    incremental = rate * p.checkpoint_interval_s * m.packed_bytes_per_record
    per_slot = state / par
    backend = "hashmap" if per_slot * p.heap_overhead < 1 * GB else "rocksdb"
    tm_state = per_slot * p.slots_per_taskmanager * (p.heap_overhead if backend == "hashmap" else 1.0)
    tm_memory_mb = 1024 * math.ceil((2 * GB + tm_state) / GB)  # 2 GB for Flink + Python workers
    rows = agents * m.graph_rows_per_agent_window
    rows_s = rows / (p.graph_budget_s - m.ours_graph_s_p99)
    # one tenant is one keyed subtask: its window's Python work must fit one core with headroom
    per_window = p.window_s / p.report_s
    max_tenant = int(p.window_s / (per_window * m.python_us_per_record * 1e-6 * p.headroom))
    return Size(agents, rate, par, max(128, _pow2_at_least(4 * par)),
                math.ceil(par / p.slots_per_taskmanager), partitions, state, state, incremental,
                backend, tm_memory_mb, rows, rows_s, math.ceil(rows_s / m.graph_rows_per_server_s),
                max_tenant, par * m.job_events_per_core_s)


def deployment(name: str, s: Size) -> dict:
    """``flink-deployment.yaml`` sized for ``s``."""
    d = copy.deepcopy(yaml.safe_load(BASE.read_text()))
    d["metadata"]["name"] = f"aura-{name}"
    conf = d["spec"]["flinkConfiguration"]
    conf["taskmanager.numberOfTaskSlots"] = str(Plan().slots_per_taskmanager)
    conf["parallelism.default"] = str(s.parallelism)
    conf["pipeline.max-parallelism"] = str(s.max_parallelism)
    conf["state.backend.type"] = s.state_backend
    if s.state_backend == "rocksdb":
        conf["execution.checkpointing.incremental"] = "true"
    d["spec"]["taskManager"]["resource"] = {"memory": f"{s.taskmanager_memory_mb}m",
                                            "cpu": Plan().slots_per_taskmanager}
    d["spec"]["taskManager"]["replicas"] = s.taskmanagers
    job = d["spec"]["job"]
    job["parallelism"] = s.parallelism
    args = job["args"]
    args[args.index("--parallelism") + 1] = str(s.parallelism)
    args[args.index("--state-backend") + 1] = s.state_backend
    if "--max-parallelism" in args:
        args[args.index("--max-parallelism") + 1] = str(s.max_parallelism)
    return d


def _human(n: float, unit: str = "B") -> str:
    for suffix, k in (("T", 1 << 40), ("G", GB), ("M", MB), ("k", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {suffix}{unit}"
    return f"{n:.0f} {unit}"


def table(sizes: dict[str, Size]) -> str:
    """The Markdown table of docs/SCALING.md."""
    rows = [
        ("agents", lambda s: f"{s.agents:,}"),
        ("events/s (1 report/agent/s)", lambda s: f"{s.events_per_s:,.0f}"),
        ("task slots = parallelism (1 core each)", lambda s: f"{s.parallelism}"),
        ("capacity at that parallelism, events/s", lambda s: f"{s.capacity_events_per_s:,.0f}"),
        ("TaskManagers (2 slots each) x memory",
         lambda s: f"{s.taskmanagers} x {s.taskmanager_memory_mb:,} MB"),
        ("pipeline.max-parallelism", lambda s: f"{s.max_parallelism}"),
        ("Kafka partitions", lambda s: f"{s.kafka_partitions}"),
        ("keyed state (open windows)", lambda s: _human(s.state_bytes)),
        ("state backend", lambda s: s.state_backend),
        ("checkpoint: full / new per interval", lambda s: f"{_human(s.checkpoint_full_bytes)} / "
                                                          f"{_human(s.checkpoint_incremental_bytes)}"),
        ("checkpoint upload rate (full, every interval)",
         lambda s: _human(s.checkpoint_full_bytes / Plan().checkpoint_interval_s, "B/s")),
        ("graph rows per later window", lambda s: f"{s.graph_rows_per_window:,.0f}"),
        ("graph write rate to finish a window in 2 s", lambda s: f"{s.graph_rows_per_s:,.0f} rows/s"),
        ("graph servers at the embedded server's rate", lambda s: f"{s.graph_servers}"),
        ("largest tenant one subtask can hold", lambda s: f"{s.max_tenant_agents:,} agents"),
    ]
    names = list(sizes)
    out = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    out += [f"| {label} | " + " | ".join(f(sizes[n]) for n in names) + " |" for label, f in rows]
    return "\n".join(out) + "\n"


def render() -> tuple[dict[str, str], str]:
    """(file name -> YAML text, Markdown table) for every size."""
    sizes = {name: size(agents) for name, agents in SIZES.items()}
    head = ("# Generated by infra/flink/sizing.py from flink-deployment.yaml; do not edit by hand.\n"
            "# Sized for {agents:,} agents (docs/SCALING.md).\n")
    files = {f"{name}.yaml": head.format(agents=s.agents)
             + yaml.safe_dump(deployment(name, s), sort_keys=False, width=100)
             for name, s in sizes.items()}
    return files, table(sizes)


def main() -> int:
    files, md = render()
    SIZES_DIR.mkdir(exist_ok=True)
    for name, text in files.items():
        (SIZES_DIR / name).write_text(text)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
