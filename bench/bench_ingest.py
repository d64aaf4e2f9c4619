"""OTLP/HTTP ingestion: spans/s accepted by ``aura api`` on one core, with request latency.

Starts the real service (``aura api --no-job``: handlers + spool worker, no streaming job)
pinned to core 0 with ``taskset``; this load generator runs on the other core. It sends
distinct OTLP protobuf export requests (templates made by the real OpenTelemetry SDK's
encoder, 512 spans each - the SDK's default batch - 8 services, server and client spans
with parent/child links; each request shifted 10 ms later with fresh ids) over
``--concurrency`` keep-alive connections for ``--seconds``. A 200 means the request is
fsynced into the spool. The spool worker (aggregation, measured on its own by
``bench_span_mapping.py``) is paused during the measurement so that the generator has its
core, then resumed to drain. Prints spans/s, requests/s, p50/p99/max latency and the CPU
the service used, and checks the ledger once drained: spans accepted = received by the
worker = in records + dead-lettered.

    python bench/bench_ingest.py [--seconds 20] [--concurrency 8] [--spans 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.otlp_payloads import fleet_request, shifted  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def load(url: str, payloads: list[bytes], seconds: float, concurrency: int,
               rate: float = 0.0) -> list[tuple[float, int]]:
    """Closed loop (``rate`` 0): each of ``concurrency`` workers sends the next payload as soon
    as its last one was answered. Open loop: request k is due at k / rate seconds (at most
    ``concurrency`` outstanding); its latency counts from when it was due."""
    out: list[tuple[float, int]] = []
    todo = iter(enumerate(payloads))
    start = time.perf_counter()
    deadline = start + seconds
    headers = {"Content-Type": "application/x-protobuf", "X-Aura-Tenant": "bench"}
    async with httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            for k, body in todo:
                due = start + k / rate if rate else time.perf_counter()
                if due >= deadline:
                    return
                if rate:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                r = await client.post(url, content=body, headers=headers)
                out.append((time.perf_counter() - due, r.status_code))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rate", type=float, default=0.0,
                   help="requests/s, open loop (0: closed loop, as fast as answered)")
    p.add_argument("--spans", type=int, default=512)
    p.add_argument("--templates", type=int, default=32)
    p.add_argument("--max-rate", type=float, default=400.0, help="requests/s to prepare payloads for")
    a = p.parse_args()
    root = tempfile.mkdtemp(prefix="aura-bench-ingest-")
    port = free_port()
    t_base = time.time() + 60  # event time ahead of the wall clock: no second is sealed by idleness
    templates = [fleet_request(a.spans, t_base, seed=i) for i in range(a.templates)]
    rate = a.rate or a.max_rate
    n = 200 + int(rate * (a.seconds + 1))
    payloads = [shifted(templates[k % len(templates)], k / rate, k + 1) for k in range(n)]
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "pipelines.cli", "api", "--no-job",
           "--port", str(port), "--no-grpc", "--data-dir", root, "--default-tenant", "bench"]
    log = open(os.path.join(root, "api.log"), "wb")  # noqa: SIM115
    env = {**os.environ, "AURA_API_MAX_BACKLOG_FILES": "1000000"}
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("aura api did not start: " + Path(root, "api.log").read_text())
        (worker,) = [int(x) for x in subprocess.check_output(["pgrep", "-P", str(server.pid)]).split()]
        subprocess.run(["taskset", "-a", "-p", "-c", "1", str(worker)], check=True, capture_output=True)
        os.sched_setaffinity(0, {1})
        warm = asyncio.run(load(base + "/v1/traces", payloads[:200], 2.0, a.concurrency))
        os.kill(worker, signal.SIGSTOP)
        cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
        results = asyncio.run(load(base + "/v1/traces", payloads[200:], a.seconds,
                                   a.concurrency * (4 if a.rate else 1), a.rate))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
        os.kill(worker, signal.SIGCONT)
        lat = np.array([r[0] for r in results]) * 1e3
        ok = sum(1 for r in results if r[1] == 200)
        codes = {c: sum(1 for r in results if r[1] == c) for c in sorted({r[1] for r in results})}
        print(f"machine: {platform.node()} {os.cpu_count()} cores, {platform.python_version()}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
        mode = (f"open loop at {a.rate:g} requests/s" if a.rate
                else f"closed loop, concurrency {a.concurrency}")
        print(f"requests: {len(results)} ({codes}), {a.spans} spans each, {mode}, {wall:.1f} s")
        print(f"spans/s accepted: {ok * a.spans / wall:,.0f}  (requests/s {ok / wall:,.0f})")
        print(f"latency ms: p50 {np.percentile(lat, 50):.2f}  p99 {np.percentile(lat, 99):.2f}  "
              f"max {lat.max():.2f}")
        print(f"service CPU: {cpu:.1f} s over {wall:.1f} s = {cpu / wall:.2f} cores (pinned to one); "
              f"spans/s per CPU-second: {ok * a.spans / max(cpu, 1e-9):,.0f}")
        spool = os.path.join(root, "spool")
        deadline = time.time() + 120
        while time.time() < deadline and any(n.endswith(".pb") for n in os.listdir(spool)):
            time.sleep(0.5)
        server.terminate()
        server.wait(60)
        with open(os.path.join(root, "ingest", "ledger.json")) as fh:
            ledger = json.load(fh)
        accepted = (ok + sum(1 for r in warm if r[1] == 200)) * a.spans
        print(f"ledger after drain: {json.dumps(ledger)}")
        print(f"reconciles: spans accepted {accepted} = received by the worker {ledger['spans_received']} "
              f"= in records {ledger['spans_in_records']} + dead-lettered {ledger['spans_dead_total']}: "
              + ("yes" if accepted == ledger["spans_received"] == ledger["spans_in_records"]
                 + ledger["spans_dead_total"] else "NO"))
    finally:
        if server.poll() is None:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
