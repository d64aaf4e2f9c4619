"""Flink job throughput (events/s) and end-to-end delay on this machine, with Beam's
streaming job on the same files in the same run for the ratio.

The fleet: ``--agents`` agents over ``--tenants`` tenants, one record per agent per second
with one call each, ``--windows`` 10 s windows (+ 10 s that close the last) in one NDJSON
file in event-time order. The Flink job (continuous landing directory, parallelism
``--parallelism``, checkpoints every 5 s, features + ONNX prediction + BFT consensus, no
graph sink) is started, then the file lands; events/s = records of the measured windows /
(last committed prediction - landing), which includes the job's cold start (JIT, first
window). Also printed: the rate after the first window (records of the later windows / time
from the first window's last commit to the last), i.e. the warm job. Delay per window, from
the ledger: window close (the watermark passed its end and the window reached Python) ->
committed prediction. The load average is printed at start and end (the machine is shared).

    python bench/bench_flink.py [--agents 10000] [--tenants 4] [--windows 4] [--parallelism 2] [--warm]

``--warm``: a small file of 8 other tenants lands first and the measured file once their
windows are out, so start-up (the Python operators open at their first bundle: model,
validators) and part of the JVM's warm-up are not in the figure.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from pipelines.beam import job as beam_job  # noqa: E402
from pipelines.config import RunConfig  # noqa: E402
from pipelines.flink import job as flink_job  # noqa: E402
from pipelines.flink.window_stage import StageSpec  # noqa: E402

T0 = 1_767_225_600.0


WARM = "warmup"  # tenant name prefix of the warm-up file (--warm)
WARM_TENANTS = 8  # enough that each Python subtask gets one (tenants hash onto subtasks)


def write_file(path: str, agents: int, tenants: int, windows: int, seed: int = 3, t0: float = T0,
               prefix: str = "t", marker: bool = True) -> int:
    """One NDJSON file, in event-time order, of ``windows`` 10 s windows plus 10 s more (its
    records close the last measured window); returns the number of records."""
    rng = random.Random(seed)
    per = agents // tenants
    n = 0
    with open(path, "wb") as fh:
        for s in range(10 * (windows + 1)):
            lines = []
            for k in range(tenants):
                for a in range(per):
                    p50 = 5 + (a % 50) + rng.random()
                    lines.append(orjson.dumps({
                        "tenant": f"{prefix}{k}", "agent_id": f"a{a}", "ts": t0 + s + (a % 4) * 0.25,
                        "latency_p50_ms": p50, "latency_p99_ms": p50 * 2, "error_rate": 0.01,
                        "request_count": 100, "cpu": 0.3, "memory": 0.4, "queue_depth": a % 7,
                        "in_flight": 2, "calls": [{"dst": f"a{(a * 7 + 1) % per}", "count": 10, "errors": 0,
                                                   "latency_ms": p50 / 2}]}))
            n += len(lines)
            fh.write(b"\n".join(lines) + b"\n")
        if marker:
            fh.write(b"{not json\n")  # a dead letter at the end: the marker that the file was read
    return n


def _land(path: str, landing: str, name: str) -> float:
    """Copy a file into the landing directory atomically; returns when it appeared."""
    hidden = os.path.join(landing, "." + name)
    shutil.copy(path, hidden)
    at = time.time()
    os.replace(hidden, os.path.join(landing, name))
    return at


def _ledgers(out: str, warm: bool) -> list[str]:
    return [p for p in glob.glob(os.path.join(out, "windows", "*", "*.json"))
            if (f"tenant={WARM}" in p) == warm]


def run_flink(path: str, base: str, cfg: RunConfig, parallelism: int, tenants: int, windows: int,
              warm_path: str | None = None) -> dict:
    """The streaming job on a landing directory; the file lands once the job is running (and,
    with ``warm_path``, once the warm-up file's windows are out: the Python operators open at
    their first bundle, so a cold job pays model loading and imports on the measured file)."""
    landing, out, ckpt = (os.path.join(base, d) for d in ("landing", "flink", "ckpt"))
    os.makedirs(landing)
    stage = StageSpec(out, 10_000, 10_000, cfg.extractor(), cfg.predictor_spec(), cfg.consensus_spec())
    spec = flink_job.FlinkSpec(landing, stage, continuous=True, monitor_interval_s=0.2,
                               parallelism=parallelism, checkpoint_dir=ckpt, checkpoint_interval_s=5.0,
                               max_runtime_s=900)
    result: dict = {}

    def feed() -> None:
        while flink_job.latest_checkpoint(ckpt) is None:  # running
            time.sleep(0.2)
        if warm_path is not None:
            _land(warm_path, landing, "warmup.ndjson")
            while len(_ledgers(out, warm=True)) < WARM_TENANTS:
                time.sleep(0.1)
        result["landed_at"] = _land(path, landing, "telemetry.ndjson")

        def done() -> bool:  # the measured windows are out and the whole file was read
            closed = len(_ledgers(out, warm=False))
            read = glob.glob(os.path.join(out, "deadletter", "*.ndjson"))
            return closed >= windows * tenants and bool(read)

        while not done():
            time.sleep(0.1)
        open(os.path.join(landing, flink_job.STOP_FILE), "w").close()  # drain: the last window closes

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    summary = flink_job.run(spec, log=lambda m: print(m, file=sys.stderr))
    th.join()
    ledgers = []
    for p in _ledgers(out, warm=False):
        with open(p, "rb") as fh:
            ledgers.append(json.loads(fh.read()))
    measured = [x for x in ledgers if x["window_start"] < T0 * 1000 + 10_000 * windows]
    n_events = sum(x["n_fresh"] for x in measured)
    last = max(x["committed_at"] for x in measured)
    elapsed = last - result["landed_at"]
    first = min(x["window_start"] for x in measured)  # after the first window: the warm job
    first_done = max(x["committed_at"] for x in measured if x["window_start"] == first)
    later = sum(x["n_fresh"] for x in measured if x["window_start"] > first)
    return {"summary": summary.to_dict(), "events": n_events, "elapsed_s": elapsed,
            "events_per_s": n_events / elapsed, "windows": len(measured),
            "later_events": later, "later_s": last - first_done,
            "later_per_s": later / (last - first_done) if last > first_done else float("nan"),
            "stage_delay": [x["committed_at"] - x["closed_at"] for x in measured],
            "commit_offsets": sorted(x["committed_at"] - result["landed_at"] for x in measured)}


def split(path: str, lines_per_file: int, base: str) -> list[str]:
    """The same records as files for Beam (its source sends a file as one event, and a gRPC
    message over 4 MB fails: 1 s of a 10,000-agent fleet is ~1.5 MB)."""
    out, chunk = [], []
    os.makedirs(os.path.join(base, "beam_in"))

    def flush() -> None:
        out.append(os.path.join(base, "beam_in", f"part-{len(out):04d}.ndjson"))
        with open(out[-1], "wb") as fh:
            fh.writelines(chunk)
        chunk.clear()

    with open(path, "rb") as fh:
        for line in fh:
            chunk.append(line)
            if len(chunk) == lines_per_file:
                flush()
    if chunk:
        flush()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--windows", type=int, default=4, help="measured 10 s windows per tenant")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--no-beam", action="store_true")
    ap.add_argument("--warm", action="store_true",
                    help="land a small file of other tenants first and measure once its windows are out")
    a = ap.parse_args()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    base = tempfile.mkdtemp(prefix="bench_flink_")
    try:
        os.makedirs(os.path.join(base, "src"))
        path = os.path.join(base, "src", "telemetry.ndjson")
        n = write_file(path, a.agents, a.tenants, a.windows)
        cfg = RunConfig(input=base, graph=False)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {a.agents} agents, "
              f"{a.tenants} tenants, {a.windows} + 1 windows, {n} records ({os.path.getsize(path) >> 20} MB)")
        warm = None
        if a.warm:
            warm = os.path.join(base, "src", "warmup.ndjson")
            write_file(warm, 5 * WARM_TENANTS, WARM_TENANTS, 1, t0=T0 - 100, prefix=WARM, marker=False)
        f = run_flink(path, base, cfg, a.parallelism, a.tenants, a.windows, warm)
        p = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
        print(f"flink (parallelism {a.parallelism}): {f['events']} events of the measured windows in "
              f"{f['elapsed_s']:.1f} s = {f['events_per_s']:,.0f} events/s; reconciles "
              f"{f['summary']['reconciles']}")
        print(f"  after the first window (job warm): {f['later_events']} events in {f['later_s']:.1f} s = "
              f"{f['later_per_s']:,.0f} events/s (not the figure above: that one includes the start)")
        print(f"  delay window close (watermark past its end, window in Python) -> committed prediction over "
              f"{f['windows']} windows: p50 {p(f['stage_delay'], 50):.2f} s, "
              f"p99 {p(f['stage_delay'], 99):.2f} s")
        print("  committed, seconds after the file landed: "
              + ", ".join(f"{x:.1f}" for x in f["commit_offsets"]))
        if not a.no_beam:
            cfg_b = RunConfig(input=base, graph=False)
            t = time.perf_counter()
            beam_files = split(path, a.agents, base)
            s = beam_job.run_files_streaming(beam_files, cfg_b.window_spec(), os.path.join(base, "beam"),
                                             cfg_b.max_out_of_orderness_s, cfg_b.guard(), cfg_b.extractor(),
                                             cfg_b.predictor_spec(), None, cfg_b.consensus_spec())
            el = time.perf_counter() - t
            print(f"beam streaming (DirectRunner): {s.read} records in {el:.1f} s = "
                  f"{s.read / el:,.0f} events/s; reconciles {s.reconciles}")
            print(f"flink / beam: {f['events_per_s'] / (s.read / el):.1f}x")
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
