"""Backtest throughput (events/s end to end) on this machine: parse, window, topology
features, in-process ONNX prediction and BFT consensus as one Beam batch run, on the
columnar path (Arrow record batches) - with the per-record batch job (`aura run --mode
batch`, same stages) on the same files in the same run as the baseline ratio.

    python bench/bench_backtest.py [--agents 1000] [--duration 300] [--no-consensus]
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

from pipelines.backtest.columnar import parse_file_columnar  # noqa: E402
from pipelines.beam import job  # noqa: E402
from pipelines.beam.backtest import run_backtest_pipeline  # noqa: E402
from pipelines.consensus.spec import ConsensusSpec  # noqa: E402
from pipelines.inference import PredictorSpec  # noqa: E402
from pipelines.inputs import expand_inputs  # noqa: E402
from pipelines.simulation.output import simulate_to_dir  # noqa: E402
from pipelines.simulation.scenario import Scenario, ScenarioConfig  # noqa: E402
from pipelines.telemetry import TimestampGuard, parse_file  # noqa: E402
from pipelines.topology.features import FeatureExtractor  # noqa: E402
from pipelines.windowing import WindowSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--tenants", type=int, default=2)
    ap.add_argument("--no-consensus", action="store_true")
    ap.add_argument("--skip-per-record", action="store_true", help="skip the slow per-record baseline")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    root = tempfile.mkdtemp(prefix="aura-bench-bt-")
    spec, ex, pred = WindowSpec(), FeatureExtractor(), PredictorSpec()
    cons = None if a.no_consensus else ConsensusSpec()
    configs = [ScenarioConfig(n_agents=a.agents, duration_s=a.duration, seed=11 + i, tenant=f"t{i}")
               for i in range(a.tenants)]
    n = a.tenants * a.agents * int(a.duration)
    try:
        dirs = {}
        for fmt in ("ndjson", "parquet"):
            dirs[fmt] = os.path.join(root, fmt)
            simulate_to_dir([Scenario(c) for c in configs], dirs[fmt], fmt)
        print(f"Backtest benchmark: {n:,} events ({a.tenants} fleets x {a.agents} agents x "
              f"{a.duration:.0f} s), 10 s windows, features + onnxruntime in-process + "
              f"{'no consensus' if cons is None else 'BFT consensus (4 validators)'}; "
              f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
        nd = expand_inputs(dirs["ndjson"])
        t0 = time.perf_counter()
        for p in nd:
            parse_file(p, TimestampGuard())
        per_parse = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for p in nd:
            parse_file_columnar(p, TimestampGuard())
        col_parse = n / (time.perf_counter() - t0)
        print(f"  parse + validate only, NDJSON: per-record {per_parse:>9,.0f} events/s, "
              f"columnar {col_parse:>9,.0f} events/s ({col_parse / per_parse:.1f}x)")
        rows = []
        base = None
        if not a.skip_per_record:
            s = job.run_batch(nd, spec, os.path.join(root, "out-job"), ex, pred, consensus=cons)
            assert s.reconciles and s.read == n
            base = n / s.elapsed_s
            rows.append(("per-record batch job (aura run --mode batch), NDJSON", base, s.elapsed_s))
        for label, sources in (("backtest columnar, NDJSON files", nd),
                               ("backtest columnar, Parquet files", expand_inputs(dirs["parquet"])),
                               ("backtest, simulated on the fly (incl. simulation)", configs)):
            out = os.path.join(root, "out-" + label.split()[-1])
            r = run_backtest_pipeline(sources, spec, out, ex, pred, cons)
            assert r.reconciles and r.read == n, r.counts
            rows.append((label, n / r.elapsed_s, r.elapsed_s))
        for label, rate, wall in rows:
            ratio = f"{rate / base:5.1f}x per-record" if base else ""
            print(f"  {label:<52} {rate:>9,.0f} events/s  {wall:6.1f} s wall  {ratio}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
