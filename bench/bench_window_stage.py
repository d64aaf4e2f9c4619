"""The Flink job's Python stage on one big window, step by step, without Flink.

One tenant of ``--agents`` agents (one record per agent per second, one call each) for one
10 s window, packed and joined as the JVM hands a window to Python (``assemble.pack`` /
``join`` mirror ``TelemetryParser`` and ``WindowRows``); then, per window: the decode
(``assemble.window_snapshot``), the snapshot's Parquet, the features, and the whole
``WindowStage.process`` with its receipt -> committed-verdict time (features, ONNX
prediction, 4-validator consensus; Parquet after the verdict).

    python bench/bench_window_stage.py [--agents 100000] [--windows 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.config import RunConfig  # noqa: E402
from pipelines.flink.assemble import join, pack, window_snapshot  # noqa: E402
from pipelines.flink.window_stage import StageSpec, TenantState, WindowStage  # noqa: E402
from pipelines.panes import write_snapshot  # noqa: E402
from schemas.arrow import METRICS  # noqa: E402

T0 = 1_767_225_600.0


def window(agents: int, seed: int = 3) -> tuple[bytes, bytes]:
    """One 10 s window of ``agents`` agents, as the JVM hands it over."""
    rng, recs = random.Random(seed), []
    for s in range(10):
        for a in range(agents):
            p50 = 5 + (a % 50) + rng.random()
            recs.append(pack({"event_time": T0 + s + (a % 4) * 0.25, "agent_id": f"a{a}",
                              **dict(zip(METRICS, [p50, p50 * 2, 0.01, 100, 0.3, 0.4, a % 7, 2])),
                              "calls": [{"dst": f"a{(a * 7 + 1) % agents}", "count": 10, "errors": 0,
                                         "latency_ms": p50 / 2}]}))
    return join(recs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=100_000)
    ap.add_argument("--windows", type=int, default=3)
    a = ap.parse_args()
    heads, meta = window(a.agents)
    out = tempfile.mkdtemp(prefix="bench_window_stage_")
    try:
        cfg = RunConfig(input=out, graph=False)
        spec = StageSpec(out, 10_000, 10_000, cfg.extractor(), cfg.predictor_spec(), cfg.consensus_spec())
        stage, state = WindowStage(spec), TenantState()
        print(f"{a.agents:,} agents, {10 * a.agents:,} records per window; load {os.getloadavg()[0]:.2f}")
        for w in range(a.windows):
            start = int(T0 * 1000) + w * 10_000
            gc.collect()
            t0 = time.perf_counter()
            snap, _ = window_snapshot("t", start, start + 10_000, heads, meta)
            t1 = time.perf_counter()
            write_snapshot(out, snap)
            t2 = time.perf_counter()
            spec.extractor.window(snap)
            t3 = time.perf_counter()
            led = stage.process("t", start, start + 10_000, heads, meta, state)
            t4 = time.perf_counter()
            print(f"window {w}: decode {t1 - t0:.2f} s, snapshot Parquet {t2 - t1:.2f} s, features "
                  f"{t3 - t2:.2f} s; process() {t4 - t3:.2f} s, receipt -> verdict "
                  f"{led['committed_at'] - led['closed_at']:.2f} s (committed {led['committed']}); "
                  f"load {os.getloadavg()[0]:.2f}")
        stage.close()
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
