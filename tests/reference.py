"""Plain-Python reference windowing, written independently of pipelines.windowing
(no numpy): what each (tenant, window) must contain."""

from __future__ import annotations

import math

METRIC_NAMES = ("latency_p50_ms", "latency_p99_ms", "error_rate", "request_count", "cpu", "memory",
                "queue_depth", "in_flight")


def window_starts(t: float, size: float, slide: float) -> list[float]:
    """Windows [k*slide, k*slide + size) holding t, in integer microseconds like Beam."""
    t_us, size_us, slide_us = round(t * 1e6), round(size * 1e6), round(slide * 1e6)
    k = t_us // slide_us
    out = []
    while k * slide_us > t_us - size_us:
        out.append(k * slide_us / 1e6)
        k -= 1
    return sorted(out)


def reference_windows(records: list[dict], size: float, slide: float | None = None) -> dict:
    """{(tenant, start): {...}} with agents, per-agent aggregates and summed edges."""
    slide = slide or size
    by_window: dict = {}
    for r in records:
        for s in window_starts(r["event_time"], size, slide):
            by_window.setdefault((r["tenant"], s), []).append(r)
    out = {}
    for key, recs in by_window.items():
        samples: dict = {}
        for r in sorted(recs, key=lambda r: (r["agent_id"], r["event_time"],
                                             tuple(r[m] for m in METRIC_NAMES), repr(r["calls"]))):
            samples.setdefault((r["agent_id"], r["event_time"]), r)  # first per (agent, ts)
        per_agent: dict = {}
        edges: dict = {}
        for (agent, _), r in sorted(samples.items()):
            per_agent.setdefault(agent, []).append(r)
            for c in r["calls"]:
                e = edges.setdefault((agent, c["dst"]), [0, 0, 0.0])
                e[0] += c["count"]
                e[1] += c["errors"]
                e[2] += c["count"] * c["latency_ms"]
        agents = sorted(set(per_agent) | {d for (_, d) in edges})
        agg = {}
        for a in agents:
            rs = per_agent.get(a, [])
            agg[a] = {m: (sum(r[m] for r in rs) if m == "request_count" else sum(r[m] for r in rs) / len(rs))
                      if rs else None for m in METRIC_NAMES}
        out[key] = {"agents": agents, "n_records": len(recs), "n_duplicates": len(recs) - len(samples),
                    "agg": agg, "n_samples": {a: len(per_agent.get(a, [])) for a in agents},
                    "edges": {k: (v[0], v[1]) for k, v in edges.items()}}
    return out


def assert_snapshot_matches(snap, ref: dict) -> None:
    """A WindowSnapshot equals its reference window (counts exactly, floats to 1e-9)."""
    assert snap.agents == ref["agents"]
    assert snap.n_records == ref["n_records"]
    assert snap.n_duplicates == ref["n_duplicates"]
    for i, a in enumerate(snap.agents):
        assert snap.n_samples[i] == ref["n_samples"][a]
        for j, m in enumerate(METRIC_NAMES):
            want = ref["agg"][a][m]
            got = snap.metrics[i, j]
            if want is None:
                assert math.isnan(got)
            else:
                assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (a, m, got, want)
    got_edges = {(snap.agents[s], snap.agents[d]): (int(c), int(e))
                 for s, d, c, e in zip(snap.edge_src, snap.edge_dst, snap.edge_count, snap.edge_errors)}
    assert got_edges == ref["edges"]
