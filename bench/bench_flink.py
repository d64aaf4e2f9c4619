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

``--minutes M`` (or ``--stream-windows N``): a long run without a big file. A thread lands one
file per 10 s window (10 s of event time of the whole fleet, written from a template of one
window with the times shifted) as the job consumes them - at most ``--backlog`` windows ahead
of the last committed one, or once per 10 s of wall time with ``--pace realtime`` - and deletes
a file once the window after it is committed (bounded disk). Printed: events/s over the whole
run and after ``--warmup-windows``, delay per window from the JVM closing it (and from Python
receiving it) to the committed verdict, p50/p99/max, and the reconciliation (records landed =
records windowed + dead letters). ``--parallelism-ratio``: the same workload at parallelism 1
then 2 in the same run, and the ratio.

    python bench/bench_flink.py --minutes 3 --agents 100000 --tenants 1 --parallelism-ratio
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from pipelines.beam import job as beam_job  # noqa: E402
from pipelines.cli import RUNNING  # noqa: E402
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


PLACEHOLDER = b"@@@@@@@@@@"  # the integer seconds of a template line's ts


def second_blocks(agents: int, tenants: int, seed: int = 3) -> list[bytes]:
    """The template of one window: per second, NDJSON of every agent (the fleet of
    ``write_file``), the integer part of each ts left as ``PLACEHOLDER``."""
    rng = random.Random(seed)
    per = agents // tenants
    blocks = []
    for _ in range(10):
        lines = []
        for k in range(tenants):
            for a in range(per):
                p50 = 5 + (a % 50) + rng.random()
                lines.append(orjson.dumps({
                    "tenant": f"t{k}", "agent_id": f"a{a}", "ts": f"@{(a % 4) * 25:02d}@",
                    "latency_p50_ms": p50, "latency_p99_ms": p50 * 2, "error_rate": 0.01,
                    "request_count": 100, "cpu": 0.3, "memory": 0.4, "queue_depth": a % 7, "in_flight": 2,
                    "calls": [{"dst": f"a{(a * 7 + 1) % per}", "count": 10, "errors": 0,
                               "latency_ms": p50 / 2}]}))
        block = b"\n".join(lines).replace(b'"ts":"@', b'"ts":' + PLACEHOLDER + b".").replace(b'@"', b"")
        blocks.append(block + b"\n")
    return blocks


def land_window(blocks: list[bytes], k: int, landing: str) -> str:
    """Window k's file (event time [T0 + 10 k, T0 + 10 k + 10)) into the landing directory, atomically."""
    name = os.path.join(landing, f"w{k:06d}.ndjson")
    hidden = os.path.join(landing, f".w{k:06d}.ndjson")
    with open(hidden, "wb") as fh:
        for s, block in enumerate(blocks):
            fh.write(block.replace(PLACEHOLDER, b"%d" % (int(T0) + 10 * k + s)))
    os.replace(hidden, name)
    return name


def _committed(out: str) -> dict[int, int]:
    """Ledgers written per window start (ms), the warm-up tenant's left out."""
    n: dict[int, int] = {}
    for p in _ledgers(out, warm=False):
        start = int(os.path.basename(p)[len("window="):-len(".json")])
        n[start] = n.get(start, 0) + 1
    return n


def run_stream(blocks: list[bytes], per_window: int, base: str, cfg: RunConfig, parallelism: int,
               tenants: int, windows: int, warmup: int, pace: str, backlog: int, checkpoint_s: float) -> dict:
    """The streaming job fed one window file at a time (see the module doc); the figures."""
    landing, out, ckpt = (os.path.join(base, d) for d in ("landing", "flink", "ckpt"))
    os.makedirs(landing)
    stage = StageSpec(out, 10_000, 10_000, cfg.extractor(), cfg.predictor_spec(), cfg.consensus_spec())
    spec = flink_job.FlinkSpec(landing, stage, continuous=True, monitor_interval_s=0.2,
                               parallelism=parallelism, checkpoint_dir=ckpt,
                               checkpoint_interval_s=checkpoint_s, tenant_idle_timeout_s=None,
                               max_runtime_s=60 + 60 * windows)
    landed: dict[int, float] = {}
    feed_s = [0.0]
    stop = threading.Event()  # the job ended (e.g. its max runtime): the feeder gives up

    def done(k: int, n: dict[int, int]) -> bool:  # window k committed for every tenant
        return n.get(int(T0 * 1000) + 10_000 * k, 0) >= tenants

    def feed() -> None:
        while not os.path.exists(os.path.join(out, RUNNING)):  # the job was submitted
            if stop.wait(0.2):
                return
        # a small file of another tenant first: once its window is out the job reads and lists the
        # directory, so each later file is listed (and read) alone, in landing order
        _land(warm_path, landing, "warm.ndjson")
        while not _ledgers(out, warm=True):
            if stop.wait(0.1):
                return
        files: dict[int, str] = {}
        for k in range(windows + 1):  # window `windows` only closes the last measured one
            while True:
                n = _committed(out)
                for j in [j for j in files if done(j + 1, n)]:
                    os.remove(files.pop(j))  # read: a later window closed
                ahead = k - backlog < 0 or done(k - backlog, n)
                due = pace != "realtime" or not landed or time.time() >= landed[0] + 10 * k
                if ahead and due and (not landed or time.time() - landed[k - 1] >= 0.5):
                    break  # 0.5 s: the previous file was listed first, so it is read first
                if stop.wait(0.05):
                    return
            t = time.perf_counter()
            files[k] = land_window(blocks, k, landing)
            landed[k] = time.time()
            feed_s[0] += time.perf_counter() - t
        while not done(windows - 1, _committed(out)):
            if stop.wait(0.1):
                return
        open(os.path.join(landing, flink_job.STOP_FILE), "w").close()  # drain: the last window closes

    warm_path = os.path.join(base, "warm.ndjson")
    n_warm = write_file(warm_path, 40, 1, 1, t0=T0 - 100, prefix=WARM, marker=False)
    th = threading.Thread(target=feed, daemon=True)
    th.start()
    summary = flink_job.run(spec, log=lambda m: print(m, file=sys.stderr))
    stop.set()
    th.join()
    led = []
    for p in glob.glob(os.path.join(out, "windows", "*", "*.json")):
        with open(p, "rb") as fh:
            led.append(json.loads(fh.read()))
    dead = 0
    for p in glob.glob(os.path.join(out, "deadletter", "*.ndjson")):
        with open(p, "rb") as fh:
            dead += sum(1 for x in fh if x.strip())
    end_ms = int(T0 * 1000) + 10_000 * windows
    measured = [x for x in led if x["window_start"] < end_ms and not x["tenant"].startswith(WARM)]
    warm_ms = int(T0 * 1000) + 10_000 * warmup
    last = max(x["committed_at"] for x in measured)
    warm = [x for x in measured if x["window_start"] >= warm_ms]
    cold = [x["committed_at"] for x in measured if x["window_start"] < warm_ms]
    warm_from = max(cold) if cold else landed[0]
    later = sum(x["n_fresh"] for x in warm)
    events = sum(x["n_fresh"] for x in measured)
    return {"parallelism": parallelism, "events": events, "elapsed_s": last - landed[0],
            "events_per_s": events / (last - landed[0]), "warm_events": later, "warm_s": last - warm_from,
            "warm_per_s": later / (last - warm_from), "windows": len(measured),
            "committed": sum(x["committed"] for x in measured),
            "jvm_delay": [x["committed_at"] - x["jvm_closed_at"] for x in warm],
            "py_delay": [x["committed_at"] - x["closed_at"] for x in warm],
            "stages": {"JVM builds the columns": [x["jvm_built_at"] - x["jvm_closed_at"] for x in warm],
                       "JVM -> Python": [x["closed_at"] - x["jvm_built_at"] for x in warm],
                       "Python -> verdict": [x["committed_at"] - x["closed_at"] for x in warm],
                       "Parquet after the verdict": [x["written_at"] - x["committed_at"] for x in warm]},
            "landed": per_window * (windows + 1) + n_warm, "windowed": sum(x["n_fresh"] for x in led),
            "dead": dead,
            "late": summary.dead.get("late", 0), "feed_s": feed_s[0]}


def report_stream(r: dict) -> None:
    """Print one run_stream result."""
    q = lambda xs, x: float(np.percentile(xs, x)) if xs else float("nan")  # noqa: E731
    print(f"flink (parallelism {r['parallelism']}): {r['events']:,} events of {r['windows']} measured "
          f"windows in {r['elapsed_s']:.1f} s = {r['events_per_s']:,.0f} events/s; warm (after the warm-up "
          f"windows): {r['warm_events']:,} in {r['warm_s']:.1f} s = {r['warm_per_s']:,.0f} events/s; "
          f"load {os.getloadavg()[0]:.2f}")
    for name, xs in (("JVM closed", r["jvm_delay"]), ("Python received", r["py_delay"])):
        print(f"  {name} -> committed verdict, warm windows: p50 {q(xs, 50):.2f} s, p99 {q(xs, 99):.2f} s, "
              f"max {max(xs, default=float('nan')):.2f} s")
    print("  median per warm window: " + ", ".join(f"{k} {q(v, 50):.2f} s" for k, v in r["stages"].items()))
    ok = r["landed"] == r["windowed"] + r["dead"]
    print(f"  reconciles {ok}: landed {r['landed']:,} = windowed {r['windowed']:,} + dead letters "
          f"{r['dead']:,} (late {r['late']}); {r['committed']} of {r['windows']} verdicts committed; feeder "
          f"{r['feed_s']:.1f} s writing files")


def stream_main(a: argparse.Namespace) -> None:
    """``--minutes`` / ``--stream-windows``: the long run (and the parallelism ratio)."""
    windows = a.stream_windows or int(round(a.minutes * 6))
    if a.parallelism_ratio:  # one process per job: PyFlink runs one local MiniCluster per process
        results = {}
        for par in (1, 2):
            with tempfile.NamedTemporaryFile(suffix=".json") as fh:
                argv = [x for x in sys.argv[1:] if x != "--parallelism-ratio"]
                subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--parallelism", str(par),
                                "--json", fh.name], check=True)
                results[par] = json.loads(fh.read())
        print(f"parallelism 2 / 1: {results[2]['events_per_s'] / results[1]['events_per_s']:.2f}x over the "
              f"run, {results[2]['warm_per_s'] / results[1]['warm_per_s']:.2f}x warm")
        return
    t = time.perf_counter()
    blocks = second_blocks(a.agents, a.tenants)
    per_window = sum(b.count(b"\n") for b in blocks)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {a.agents:,} agents, "
          f"{a.tenants} tenants, {windows} measured windows (+1) of {per_window:,} records "
          f"({sum(map(len, blocks)) >> 20} MB a file; template in {time.perf_counter() - t:.1f} s), "
          f"{a.warmup_windows} warm-up, pace {a.pace}, backlog {a.backlog}")
    base = tempfile.mkdtemp(prefix="bench_flink_")
    try:
        r = run_stream(blocks, per_window, base, RunConfig(input=".", graph=False), a.parallelism, a.tenants,
                       windows, a.warmup_windows, a.pace, a.backlog, a.checkpoint_interval)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report_stream(r)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(r, fh)


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
    ap.add_argument("--minutes", type=float, default=0.0, help="a long run: minutes of event time")
    ap.add_argument("--stream-windows", type=int, default=0, help="a long run: measured windows")
    ap.add_argument("--warmup-windows", type=int, default=2, help="long run: not in the warm figures")
    ap.add_argument("--pace", choices=("max", "realtime"), default="max")
    ap.add_argument("--backlog", type=int, default=2, help="long run: files landed ahead of the last commit")
    ap.add_argument("--checkpoint-interval", type=float, default=10.0)
    ap.add_argument("--parallelism-ratio", action="store_true", help="long run at parallelism 1, then 2")
    ap.add_argument("--json", help=argparse.SUPPRESS)  # long run: the result, for --parallelism-ratio
    a = ap.parse_args()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if a.minutes or a.stream_windows:
        stream_main(a)
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        return
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
