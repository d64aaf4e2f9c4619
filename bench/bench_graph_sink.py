"""Graph sink: write latency of later windows of a 100,000-agent fleet against the embedded
ArcadeDB Bolt server, the column path (issue 21) beside the per-row path of issue 5 in the
same run, with the time split into ours (rows, change detection, the driver packing the
parameters) and the server's.

Synthetic windows (``pipelines/graph/synthetic.py``): a fixed call graph with 2 callees per
agent; between windows 5 % of agents and 5 % of edges change (far beyond epsilon), 1 % of
the links fail. Change detection as ``aura run`` uses it (epsilon 0.05, staggered refresh
every 10 windows). Paths, each on its own tenant and change-detection state, their windows
interleaved (window k of every path before window k + 1 of any) so that they share the
machine's load:

- ``rows``: the per-row path of issue 5 (``GraphSpec(row_path=True)``: a dict per row,
  per-row change detection, ``UNWIND $rows ... MERGE``), the baseline;
- ``columns``: the column path (``pipelines/graph/plan.py``): numpy change detection, a
  list per property, MERGE only for new keys, MATCH + SET for changed rows, ``last_window``
  only for refreshes;
- ``columns-x2``: the same with ``parallel=2`` (update/touch steps in two concurrent sessions);
- ``columns-20k``: the same with 20,000 rows per transaction instead of 5,000.

Per later window: latency (``write_snapshot``), rows written (of which touches), ours =
this process's CPU time during the write (building rows, change detection, packing, the
driver), build = the wall time of building the batch alone, server = the server process's
CPU time during the write (``/proc/<pid>/stat``), statements = wall time of the statements.
The first window (every row new) is reported apart. A warm-up fleet of 2,000 agents is
written first on every path, not measured.

    python bench/bench_graph_sink.py [--agents 100000] [--windows 11] [--paths rows,columns,columns-x2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.graph.server import EmbeddedGraphServer  # noqa: E402
from pipelines.graph.sink import GraphSink, GraphSpec  # noqa: E402
from pipelines.graph.synthetic import fleet_windows  # noqa: E402

PATHS = {"rows": {"row_path": True}, "columns": {}, "columns-x2": {"parallel": 2},
         "columns-20k": {"batch_size": 20_000}}
BUDGET_S = 2.0  # the bar for a later 100,000-agent window, p99


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    latency_s: float
    rows: int
    touched: int
    ours_cpu_s: float
    build_s: float
    server_cpu_s: float
    statements_s: float
    steps: dict = field(default_factory=dict)


def write(sink: GraphSink, snap, server_pid: int) -> Window:
    """One window through the sink, measured."""
    rows0 = sink.stats["agent_rows"] + sink.stats["call_rows"]
    touch0 = sink.stats["agent_rows_touched"] + sink.stats["call_rows_touched"]
    sink.timing.clear()
    s0, c0, t0 = cpu_s(server_pid), time.process_time(), time.perf_counter()
    assert sink.write_snapshot(snap), sink.errors
    lat = time.perf_counter() - t0
    steps = {k[5:]: v for k, v in sink.timing.items() if k.startswith("step.")}
    return Window(lat, sink.stats["agent_rows"] + sink.stats["call_rows"] - rows0,
                  sink.stats["agent_rows_touched"] + sink.stats["call_rows_touched"] - touch0,
                  time.process_time() - c0, sink.timing["build_s"], cpu_s(server_pid) - s0,
                  sink.timing["statements_s"], steps)


def p(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def bench(srv: EmbeddedGraphServer, n: int, n_windows: int, paths: list[str]) -> dict:
    """First and later windows of an ``n``-agent fleet on every path, interleaved."""
    pid = srv.process.pid
    sinks = {name: GraphSink(GraphSpec(srv.uri, *srv.auth, state_key=f"bench-{name}-{n}", stall_timeout_s=600,
                                       give_up_s=900, **PATHS[name])).open() for name in paths}
    fleets = {name: fleet_windows(n, n_windows, tenant=f"bench-{name}-{n}", seed=n) for name in paths}
    out: dict = {name: [] for name in paths}
    try:
        for k in range(n_windows):
            for name in paths:
                w = write(sinks[name], fleets[name][k], pid)
                out[name].append(w)
                print(f"  {n:,} agents, window {k}, {name}: {w.latency_s:.2f} s, {w.rows:,} rows "
                      f"({w.touched:,} touched), ours CPU {w.ours_cpu_s:.2f} s (build {w.build_s:.2f} s), "
                      f"server CPU {w.server_cpu_s:.2f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for s in sinks.values():
            s.close()
    return out


def report(n: int, results: dict, baseline: str) -> None:
    print(f"\n{n:,} agents, {len(next(iter(results.values()))) - 1} later windows per path\n")
    print("| path | first window: rows, s, rows/s | later: rows (touched) | p50 / p99 s "
          "| ours CPU p50 / p99 s (build p50) | server CPU p50 / p99 s | statements p50 s | rows/s "
          "| p50 vs baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = [w.latency_s for w in results[baseline][1:]] if baseline in results else None
    for name, ws in results.items():
        first, later = ws[0], ws[1:]
        lat = [w.latency_s for w in later]
        ours = [w.ours_cpu_s for w in later]
        server = [w.server_cpu_s for w in later]
        rate = sum(w.rows for w in later) / sum(lat)
        ratio = "baseline" if name == baseline or not base else f"{p(base, 50) / p(lat, 50):.1f}x faster"
        print(f"| {name} | {first.rows:,}, {first.latency_s:.1f}, {first.rows / first.latency_s:,.0f} | "
              f"{np.mean([w.rows for w in later]):,.0f} ({np.mean([w.touched for w in later]):,.0f}) | "
              f"{p(lat, 50):.2f} / {p(lat, 99):.2f} | {p(ours, 50):.2f} / {p(ours, 99):.2f} "
              f"({p([w.build_s for w in later], 50):.2f}) | {p(server, 50):.2f} / {p(server, 99):.2f} | "
              f"{p([w.statements_s for w in later], 50):.2f} | {rate:,.0f} | {ratio} |")
    for name, ws in results.items():
        later = ws[1:]
        names = sorted({k for w in later for k in w.steps})
        if names:
            print(f"{name}: statement wall p50 per step: "
                  + ", ".join(f"{k} {p([w.steps.get(k, 0.0) for w in later], 50):.2f} s" for k in names))
    for name, ws in results.items():
        later = ws[1:]
        ours99, rows = p([w.ours_cpu_s for w in later], 99), np.mean([w.rows for w in later])
        cpu_bound = p([w.ours_cpu_s + w.server_cpu_s for w in later], 99)
        text = (f"{name}: ours {ours99:.2f} s of the {BUDGET_S:g} s budget (p99); CPU-bound window "
                f"(ours + server CPU, p99) {cpu_bound:.2f} s; ")
        if ours99 < BUDGET_S:
            text += (f"a server meeting the budget must write {rows:,.0f} rows in {BUDGET_S - ours99:.2f} s "
                     f"= {rows / (BUDGET_S - ours99):,.0f} rows/s")
        else:
            text += "ours alone is over the budget"
        print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="100000", help="fleet sizes, comma-separated")
    ap.add_argument("--windows", type=int, default=11, help="windows per fleet (the first one in full)")
    ap.add_argument("--paths", default="rows,columns,columns-x2", help=f"of {', '.join(PATHS)}")
    ap.add_argument("--baseline", default="rows")
    ap.add_argument("--heap", default="2g")
    a = ap.parse_args()
    paths = a.paths.split(",")
    try:
        import neo4j._rust  # noqa: F401
        rust = "yes"
    except ImportError:
        rust = "no"
    print(f"graph sink bench: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, embedded ArcadeDB Bolt server (heap {a.heap}), "
          f"neo4j-rust-ext packing: {rust}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        srv = EmbeddedGraphServer(os.path.join(tmp, "graph"), heap=a.heap).start()
        print(f"server ready in {time.perf_counter() - t0:.1f} s (pid {srv.process.pid})")
        try:
            bench(srv, 2000, 3, paths)  # warm-up: JIT and caches, not reported
            results = {n: bench(srv, n, a.windows, paths) for n in map(int, a.agents.split(","))}
        finally:
            srv.stop()
    for n, res in results.items():
        report(n, res, a.baseline)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
