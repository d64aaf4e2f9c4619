"""What metrics and tracing cost the streaming job: throughput with them off and on, same run.

Each repetition runs the job twice at the same time, each as a process of its own doing what
``aura run`` does (``pipelines.cli``: ``job_observability`` at start, then ``run_job``:
streaming over the same simulated telemetry, with features, prediction and four-validator
consensus), one with observability OFF and one ON, started in alternating order. Running the
pair side by side (one per core) puts both under the same machine at the same moment: this
machine's speed drifts with other work by far more than the few per cent to be resolved, and
runs one after the other then compare different machines. ON is what ``aura api`` gives its
job: ``PROMETHEUS_MULTIPROC_DIR`` set to a fresh directory (``pipelines.observe`` records the
job's metrics only then) and spans exported over OTLP/HTTP (``--otlp-endpoint``) to a real
receiver in this process (``tests/otlp_receiver.py``); the ON run's spans and metric files are
counted, so ON is known to be on. Last, the CPU one exported span costs is measured on its
own, which bounds the tracing part of the cost directly.

Two throughputs per run: records per second of wall time (the pipeline's ``elapsed_s``) and
records per CPU-second of the job process over its run (``time.process_time``, every thread;
the last spans' export included). The job is CPU-bound (one Python process), so its CPU
throughput is what it sustains on a core of its own, and is less disturbed by other work than
wall time. The ratio ON / OFF is taken per pair; the bar is a median cost of at most 5 % (CPU;
the wall-time figures are printed beside it).

    python bench/bench_observability.py [--agents 100] [--duration 300] [--tenants 2] [--reps 8]
        [--graph] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

BAR = 0.05
OBSERVABILITY_ENV = ("PROMETHEUS_MULTIPROC_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT",
                     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "AURA_LOG_FORMAT")


def child(argv: list[str]) -> None:
    """In the job's process: ``aura run ARGV`` as the CLI runs it, timed; one JSON line out."""
    from pipelines import tracing
    from pipelines.cli import build_parser, job_observability, run_job

    a = build_parser().parse_args(["run", *argv])
    job_observability(a)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = run_job(a)
    tracing.flush()  # exporting the spans is part of the cost
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({"read": summary.read, "windows": summary.windows, "predictions": summary.predictions,
                      "reconciles": summary.reconciles, "elapsed_s": summary.elapsed_s, "cpu_s": cpu,
                      "run_wall_s": wall, "tracing": tracing.enabled()}))


def start_job(tele: str, out: str, graph: bool, metrics_dir: str | None,
              endpoint: str | None) -> subprocess.Popen:
    """One job process, started."""
    env = {k: v for k, v in os.environ.items() if k not in OBSERVABILITY_ENV}
    args = ["--input", tele, "--mode", "streaming", "--out", out, "--no-progress",
            *(() if graph else ("--no-graph",))]
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if endpoint is not None:
        args += ["--otlp-endpoint", endpoint]
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_figures(proc: subprocess.Popen) -> dict:
    """A job process's figures, once it ended."""
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the job failed ({proc.returncode}):\n{stderr[-3000:]}")
    r = json.loads(stdout.strip().splitlines()[-1])
    if not r["reconciles"]:
        raise RuntimeError(f"the job's counts do not reconcile: {r}")
    r["records_per_s"] = r["read"] / r["elapsed_s"]
    r["records_per_cpu_s"] = r["read"] / r["cpu_s"]
    return r


def span_cpu_s(endpoint: str, n_windows: int = 1000) -> float:
    """CPU seconds per stage span with tracing on (started, ended, batched and exported over
    OTLP/HTTP), in this process; an upper bound, as the receiver decoding them runs here too."""
    from pipelines import tracing

    stages = ("window", "features", "predict", "consensus", "sinks", "sinks", "sinks", "sinks")
    assert tracing.configure("aura-bench", endpoint)
    try:
        cpu0 = time.process_time()
        for w in range(n_windows):
            for stage in stages:
                with tracing.window_span(stage, "bench", 1_767_225_600_000 + 10_000 * w, pane=0):
                    pass
        tracing.flush()
        return (time.process_time() - cpu0) / (n_windows * len(stages))
    finally:
        tracing.shutdown()


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def _show(name: str, s: dict) -> str:
    return (f"{name}: median {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}, "
            f"stdev {s['stdev']:.3f})")


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return 0
    from pipelines.cli import main as aura
    from tests.otlp_receiver import OTLPReceiver

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of event time per tenant")
    ap.add_argument("--tenants", type=int, default=2)
    ap.add_argument("--reps", type=int, default=8, help="OFF/ON pairs")
    ap.add_argument("--graph", action="store_true", help="with the graph sink (an embedded server per run)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="aura-bench-obs-")
    t_start = time.perf_counter()
    try:
        tele = os.path.join(root, "telemetry")
        assert aura(["simulate", "--agents", str(a.agents), "--duration", str(a.duration), "--seed", "1",
                     "--tenants", str(a.tenants), "--out", tele]) == 0
        n = a.agents * int(a.duration) * a.tenants
        stages = "features + prediction + consensus" + (" + graph" if a.graph else "")
        print(f"observability overhead: the streaming job over {n:,} records ({a.tenants} tenants x "
              f"{a.agents} agents x {a.duration:.0f} s), {stages}; {a.reps} OFF/ON pairs side by side; "
              f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}", flush=True)
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        cpu_ratios, wall_ratios = [], []
        with OTLPReceiver() as rx:
            for rep in range(a.reps):
                metrics_dir = os.path.join(root, f"metrics-{rep}")
                os.makedirs(metrics_dir)
                before = len(rx.spans())
                outs = {arm: os.path.join(root, f"out-{rep}-{arm}") for arm in ("off", "on")}
                procs = {}
                for arm in (("off", "on") if rep % 2 == 0 else ("on", "off")):  # started together
                    procs[arm] = start_job(tele, outs[arm], a.graph, *((metrics_dir, rx.endpoint)
                                                                      if arm == "on" else (None, None)))
                pair = {arm: job_figures(p) for arm, p in procs.items()}
                rx.wait_quiet(0.5, 10.0)
                on = pair["on"]
                on["spans"] = len(rx.spans()) - before
                on["metric_files"] = len([f for f in os.listdir(metrics_dir) if f.endswith(".db")])
                if not (on["tracing"] and on["spans"] and on["metric_files"]) or pair["off"]["tracing"]:
                    raise RuntimeError(f"ON without observability or OFF with it: {pair}")
                for arm in ("off", "on"):
                    r = pair[arm]
                    shutil.rmtree(outs[arm], ignore_errors=True)
                    if r["read"] != n:
                        raise RuntimeError(f"{arm}: read {r['read']} of {n} records")
                    runs[arm].append(r)
                    seen = f", {r['spans']} spans, {r['metric_files']} metric files" if arm == "on" else ""
                    print(f"  pair {rep + 1}  {arm:<3}  {r['records_per_cpu_s']:>7,.0f} records/CPU-s  "
                          f"{r['records_per_s']:>7,.0f} records/s  (CPU {r['cpu_s']:.1f} s, pipeline "
                          f"{r['elapsed_s']:.1f} s{seen})", flush=True)
                cpu_ratios.append(pair["on"]["records_per_cpu_s"] / pair["off"]["records_per_cpu_s"])
                wall_ratios.append(pair["on"]["records_per_s"] / pair["off"]["records_per_s"])
            per_span = span_cpu_s(rx.endpoint)
        cpu, wall = spread(cpu_ratios), spread(wall_ratios)
        cost = 1 - cpu["median"]
        med = {k: [statistics.median(r[m] for r in runs[k]) for m in ("records_per_cpu_s", "records_per_s")]
               for k in runs}
        spans = statistics.median(r["spans"] for r in runs["on"])
        direct = spans * per_span / statistics.median(r["cpu_s"] for r in runs["off"])
        print(f"  OFF  {med['off'][0]:>7,.0f} records/CPU-s  {med['off'][1]:>7,.0f} records/s (medians)\n"
              f"  ON   {med['on'][0]:>7,.0f} records/CPU-s  {med['on'][1]:>7,.0f} records/s (medians); "
              f"{spans:.0f} spans per run ({runs['on'][0]['windows']} windows)\n"
              f"  ON/OFF per pair, {_show('CPU throughput', cpu)}\n"
              f"  spans alone: {per_span * 1e6:.0f} us CPU per span exported x {spans:.0f} spans = "
              f"{direct * 100:.2f} % of a run's CPU\n"
              f"  ON/OFF per pair, {_show('wall throughput', wall)}\n"
              f"  cost of metrics + tracing (CPU): {cost * 100:+.1f} % (bar: <= {BAR * 100:.0f} %): "
              f"{'PASS' if cost <= BAR else 'FAIL'}; wall: {(1 - wall['median']) * 100:+.1f} %  "
              f"[{time.perf_counter() - t_start:.0f} s]")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"records": n, "runs": runs, "cpu_ratio": cpu, "wall_ratio": wall, "cost": cost,
                           "span_cpu_s": per_span, "spans_share_of_cpu": direct, "bar": BAR,
                           "pass": cost <= BAR}, fh, indent=2)
        return 0 if cost <= BAR else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
