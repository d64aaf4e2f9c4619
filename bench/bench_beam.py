"""Beam windowing job throughput (events/s) on this machine, batch and streaming.

Both modes run on the same simulated NDJSON telemetry in one run. As a floor, the same run
times the per-record parse + validate alone (the Python work every mode must do) and
reports each mode as a ratio to it.

    python bench/bench_beam.py [--agents 1000] [--duration 120]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from pipelines.beam import job  # noqa: E402
from pipelines.inputs import expand_inputs  # noqa: E402
from pipelines.simulation.output import simulate_to_dir  # noqa: E402
from pipelines.simulation.scenario import Scenario, ScenarioConfig  # noqa: E402
from pipelines.telemetry import parse_file  # noqa: E402
from pipelines.windowing import WindowSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=120.0)
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    root = tempfile.mkdtemp(prefix="aura-bench-")
    try:
        tele = os.path.join(root, "telemetry")
        simulate_to_dir(Scenario(ScenarioConfig(n_agents=a.agents, duration_s=a.duration, seed=1)), tele)
        paths = expand_inputs(tele)
        n = a.agents * int(a.duration)
        print(f"Beam benchmark: {n:,} records ({a.agents} agents x {a.duration:.0f} s, NDJSON, "
              f"{len(paths)} files), 10 s tumbling windows, {os.cpu_count()} cores, "
              f"{platform.machine()}, Python {platform.python_version()}")
        t0 = time.perf_counter()
        for p in paths:
            parse_file(p)
        floor = n / (time.perf_counter() - t0)
        print(f"  parse+validate only (floor)   {floor:>10,.0f} events/s")
        spec = WindowSpec()
        for mode, run in (("batch (FnApiRunner)", lambda o: job.run_batch(paths, spec, o)),
                          ("streaming (TestStream)", lambda o: job.run_files_streaming(paths, spec, o))):
            s = run(os.path.join(root, mode.split()[0]))
            assert s.reconciles and s.windowed == n
            rate = n / s.elapsed_s
            print(f"  {mode:<29} {rate:>10,.0f} events/s   ({rate / floor:.2f}x the parse floor, "
                  f"{s.elapsed_s:.1f} s wall incl. pipeline start)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
