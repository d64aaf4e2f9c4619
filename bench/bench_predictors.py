"""Predictor latency and throughput: in-process ONNX Runtime vs a local tritonserver.

For batches of 1, 64 and 1024 sequences (T=8 windows x 65 features), per-call latency
p50/p99 and rows/s, in one run: OnnxPredictor in-process, TritonPredictor over gRPC and
over HTTP to `aura serve`'s server on 127.0.0.1 (python backend running the same ONNX file
on CPU). Targets (issue 4): in-process p99 < 1 ms at batch 64; Triton p99 < 5 ms at batch 1.

    python bench/bench_predictors.py [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.inference import OnnxPredictor, TritonPredictor  # noqa: E402
from pipelines.triton_server import TritonServer  # noqa: E402


def measure(pred, x, dt, calls: int) -> tuple[float, float, float]:
    for _ in range(10):
        pred.run_inference(x, dt)
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        pred.run_inference(x, dt)
        lat.append(time.perf_counter() - t0)
    lat = np.array(lat) * 1000
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), len(x) / (lat.mean() / 1000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000,
                    help="calls per cell (a fifth at batch 1024); the p99 of 300 calls is their 3rd-worst")
    a = ap.parse_args()
    local = OnnxPredictor()
    local.load_model()
    info = local.info
    print(f"predictor benchmark: {a.calls} calls per cell, {os.cpu_count()} cores, {platform.machine()}, "
          f"Python {platform.python_version()}; in-process provider {local.provider}")
    print(f"  {'predictor':<22}{'batch':>6}{'p50 ms':>9}{'p99 ms':>9}{'rows/s':>12}  target")
    with TritonServer(tempfile.mkdtemp(prefix="aura-triton-")) as server:
        preds = [("onnxruntime in-process", local),
                 ("triton gRPC", TritonPredictor(f"127.0.0.1:{server.grpc_port}", "grpc")),
                 ("triton HTTP", TritonPredictor(f"127.0.0.1:{server.http_port}", "http"))]
        for batch in (1, 64, 1024):
            rng = np.random.default_rng(batch)
            x = rng.standard_normal((batch, info.seq_len, info.n_features)).astype(np.float32)
            dt = np.full((batch, info.seq_len), 10.0, np.float32)
            for name, pred in preds:
                p50, p99, rate = measure(pred, x, dt, a.calls if batch < 1024 else max(30, a.calls // 5))
                target = ""
                if name.startswith("onnx") and batch == 64:
                    target = f"p99 < 1 ms: {'yes' if p99 < 1 else 'NO'}"
                if name.startswith("triton") and batch == 1:
                    target = f"p99 < 5 ms: {'yes' if p99 < 5 else 'NO'}"
                print(f"  {name:<22}{batch:>6}{p50:>9.3f}{p99:>9.3f}{rate:>12,.0f}  {target}")


if __name__ == "__main__":
    main()
