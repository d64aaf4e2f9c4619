"""Consensus stage overhead: committed verdicts/s and p50/p99 commit latency, n = 4 and 7,
in process and over loopback TCP (one process per validator), verdicts batched per block.

Two validator predictors: ``linear`` (a microsecond logistic model: the protocol's own
cost, signatures and hashing included) and ``onnx`` (each validator recomputes every
verdict with the committed ONNX model, T=8 x 65 features: the full cost).
Latency: from a chunk's submission to the moment f+1 validators report its block committed.

    .venv/bin/python bench/bench_consensus.py [--verdicts 20000] [--block 256] [--no-tcp]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.consensus.cluster import LinearPredictor, make_requests  # noqa: E402
from pipelines.consensus.stage import ConsensusConfig, ConsensusStage  # noqa: E402
from pipelines.consensus.tcp import Client, start_validators, write_config  # noqa: E402


def predictor(kind: str):
    if kind == "linear":
        return LinearPredictor(65)
    from pipelines.inference import OnnxPredictor

    p = OnnxPredictor()
    p.load_model()
    return p


class TimedStage(ConsensusStage):
    """Records when each height becomes final."""

    def _collect(self) -> None:
        before = self._next_height
        super()._collect()
        now = time.perf_counter()
        for h in range(before, self._next_height):
            self.final_at[h] = now


def in_process(n: int, kind: str, total: int, block: int, chunk: int) -> dict:
    preds = [predictor(kind) for _ in range(n)]
    stage = TimedStage(preds, ConsensusConfig(validators=n, max_block=block))
    stage.final_at = {}
    reqs = make_requests(total, preds[0], t=8, n_features=65)
    lat = []
    t0 = time.perf_counter()
    for i in range(0, total, chunk):
        sent = time.perf_counter()
        committed, disputed = stage.process(reqs[i:i + chunk])
        assert not disputed and len(committed) == len(reqs[i:i + chunk])
        lat += [stage.final_at[c.certificate["height"]] - sent for c in committed]
    wall = time.perf_counter() - t0
    return {"verdicts_s": total / wall, "p50_ms": 1e3 * np.percentile(lat, 50),
            "p99_ms": 1e3 * np.percentile(lat, 99)}


def over_tcp(n: int, kind: str, total: int, block: int, chunk: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cluster.json")
        cfg = write_config(path, n, predictor=kind, base_timeout=1.0, max_block=block)
        procs = start_validators(path, n)
        reqs = make_requests(total, predictor(kind), t=8, n_features=65)

        async def go():
            client = Client(cfg)
            await client.connect()
            warm = make_requests(block, LinearPredictor(65) if kind == "linear" else predictor(kind), t=8,
                                 n_features=65, start_ms=10**12)
            await client.submit(warm)
            assert await client.wait_for({r.vid for r in warm}, 60)
            sent_at = {}
            t0 = time.perf_counter()
            for i in range(0, total, chunk):
                part = reqs[i:i + chunk]
                now = time.perf_counter()
                for r in part:
                    sent_at[r.vid] = now
                await client.submit(part)
                await asyncio.sleep(0)
            assert await client.wait_for({r.vid for r in reqs}, 300)
            wall = max(client.final_at.values()) - t0
            done = client.committed_vids()
            lat = [client.final_at[done[r.vid]] - sent_at[r.vid] for r in reqs]
            client.close()
            return total / wall, lat

        try:
            rate, lat = asyncio.run(go())
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return {"verdicts_s": rate, "p50_ms": 1e3 * np.percentile(lat, 50),
            "p99_ms": 1e3 * np.percentile(lat, 99)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--verdicts", type=int, default=20_000)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1024, help="verdicts handed to the stage per call")
    ap.add_argument("--no-tcp", action="store_true")
    a = ap.parse_args()
    print(f"{a.verdicts} verdicts (onnx: half), {a.block} per block, submitted {a.chunk} at a time; "
          f"{os.cpu_count()} cores")
    print(f"{'transport':<12}{'n':>3}  {'predictor':<9}{'verdicts/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    runs = [("in-process", n, k) for n in (4, 7) for k in ("linear", "onnx")]
    if not a.no_tcp:
        runs += [("tcp", n, k) for n in (4, 7) for k in ("linear", "onnx")]
    for transport, n, kind in runs:
        total = a.verdicts if kind == "linear" else a.verdicts // 2
        fn = in_process if transport == "in-process" else over_tcp
        r = fn(n, kind, total, a.block, a.chunk)
        print(f"{transport:<12}{n:>3}  {kind:<9}{r['verdicts_s']:>12,.0f}"
              f"{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
