"""Simulator throughput: agent-ticks per second on one core for a 10,000-agent fleet.

Prints three figures: the physics alone (telemetry arrays per tick), plus building the
Arrow telemetry table, plus writing Parquet. Target (issue 2): >= 1,000,000 agent-ticks/s.

    python bench/bench_simulator.py [--agents 10000] [--ticks 300] [--graph layered]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.simulation.output import tick_table, write_table  # noqa: E402
from pipelines.simulation.scenario import Scenario, ScenarioConfig  # noqa: E402

TARGET = 1_000_000


def measure(agents: int, ticks: int, graph: str, stage: str) -> float:
    sc = Scenario(ScenarioConfig(n_agents=agents, duration_s=float(ticks), seed=1, graph=graph))
    out = tempfile.mkdtemp()
    chunk = []
    t0 = time.perf_counter()
    for k, (epoch_s, tel) in enumerate(sc.ticks()):
        if stage == "physics":
            continue
        chunk.append(tick_table(sc, epoch_s, tel))
        if stage == "parquet" and len(chunk) == 10:
            import pyarrow as pa

            write_table(pa.concat_tables(chunk), os.path.join(out, f"p{k}.parquet"))
            chunk = []
    elapsed = time.perf_counter() - t0
    return agents * ticks / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--graph", default="layered", choices=("layered", "scale_free"))
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    print(f"simulator benchmark: {a.agents} agents x {a.ticks} ticks, graph {a.graph}, one core, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    for stage in ("physics", "arrow", "parquet"):
        rate = measure(a.agents, a.ticks, a.graph, stage)
        print(f"  {stage:<8} {rate:>12,.0f} agent-ticks/s   ({rate / TARGET:.2f}x the 1M target)")


if __name__ == "__main__":
    main()
