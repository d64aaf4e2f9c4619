"""``/metrics`` of a running ``aura api`` (a real process with its streaming job, consensus and
embedded graph server; the shared one of tests/service_fixture.py) agrees with what the job
wrote: records by tenant reconcile with the lines accepted and the job's ledger, verdicts
with the committed prediction files, per-window stage timings exist for every stage, and the
fleet families equal the latest window's outputs, with bounded labels.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pipelines import observe
from pipelines.config import ApiConfig
from pipelines.service import outputs
from pipelines.service.fleet_metrics import topology_stability, worst_agents
from pipelines.source_ledger import LEDGER_FILE
from tests.service_fixture import AGENTS, TENANT

pytest_plugins = ["tests.service_fixture"]

TOP_K = ApiConfig.metrics_top_agents
STAGES = ("window", "features", "predict", "consensus", "sinks", "graph")
ROOT = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[str, list[tuple[dict, float]]]:
    """sample name -> [(labels, value)] of a Prometheus text exposition."""
    out: dict[str, list] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((s.labels, s.value))
    return out


def value(m: dict, name: str, **labels) -> float:
    return sum(v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def _committed(run: Path) -> int:
    n = 0
    for path in outputs.latest_panes(str(run), "predictions", TENANT).values():
        n += outputs.prediction(path)["certificate"] is not None
    return n


def _ledger(run: Path) -> tuple[int, int, Counter]:
    """The job's own ledger of what it read: records read, windowed, dead-lettered by reason."""
    with contextlib.closing(sqlite3.connect(run / LEDGER_FILE)) as db:
        rows = db.execute("SELECT read, emitted, dead FROM files").fetchall()
    dead: Counter = Counter()
    for _, _, d in rows:
        dead.update(json.loads(d))
    return sum(r[0] for r in rows), sum(r[1] for r in rows), dead


@pytest.fixture(scope="module")
def service(live_service):
    """The shared live service (tests/service_fixture.py), once the job has read every line it
    accepted and /metrics and the outputs agree twice running."""
    run = Path(live_service.api.data_dir) / "run"
    deadline, m = time.monotonic() + 240, {}
    with httpx.Client(base_url=live_service.url, timeout=60) as c:
        while time.monotonic() < deadline:
            m = samples(c.get("/metrics").text)
            done = (sum(v for _, v in m.get("aura_records_read_total", []))
                    == value(m, "aura_telemetry_lines_received_total") == _ledger(run)[0]
                    and value(m, "aura_verdicts_total", outcome="committed") == _committed(run) >= 6)
            if done and samples(c.get("/metrics").text) == m:
                break
            time.sleep(1.0)
    features = {s: pq.read_table(p).to_pylist()[0]
                for s, p in outputs.latest_panes(str(run), "features", TENANT).items()}
    snaps = outputs.latest_panes(str(run), "snapshots", TENANT)
    return {"m": m, "run": run, "features": features, "committed": _committed(run),
            "snap": pq.read_table(snaps[max(snaps)]).to_pylist()[0], "ledger": _ledger(run)}


def test_records_by_tenant_reconcile_with_the_lines_accepted_and_the_jobs_ledger(service):
    m, (read_total, windowed_total, dead_by_reason) = service["m"], service["ledger"]
    read = {lab["tenant"]: v for lab, v in m["aura_records_read_total"]}
    assert sum(read.values()) == value(m, "aura_telemetry_lines_received_total") == read_total
    for tenant, n in read.items():
        dead = value(m, "aura_records_dead_lettered_total", tenant=tenant)
        assert n == value(m, "aura_records_windowed_total", tenant=tenant) + dead
    assert value(m, "aura_records_windowed_total") == windowed_total
    assert {lab["reason"] for lab, v in m["aura_records_dead_lettered_total"] if v} == set(dead_by_reason)
    for reason, n in dead_by_reason.items():
        assert value(m, "aura_records_dead_lettered_total", reason=reason) == n
    # the demo's faults: truncated JSON names no tenant; the others are acme's; one is late
    assert read[observe.UNKNOWN_TENANT] >= 1
    assert value(m, "aura_records_dead_lettered_total", reason="late") >= 1


def test_every_stage_of_every_committed_window_is_timed(service):
    m, committed = service["m"], service["committed"]
    counts = {lab["stage"]: v for lab, v in m["aura_stage_duration_seconds_count"]}
    assert set(STAGES) <= set(counts)
    # a prediction may still wait for its consensus block; every committed one went through it
    assert counts["predict"] >= counts["consensus"] == committed
    assert value(m, "aura_consensus_commit_duration_seconds_count") == counts["consensus"]
    assert value(m, "aura_inference_duration_seconds_count") == counts["predict"]
    assert value(m, "aura_window_verdict_latency_seconds_count") == committed
    assert 0 < value(m, "aura_window_verdict_latency_seconds_sum") / committed < 60
    assert value(m, "aura_verdicts_total", tenant=TENANT, outcome="disputed") == 0
    written = value(m, "aura_graph_writes_total", outcome="written")
    assert written >= 3 * committed and value(m, "aura_graph_writes_total", outcome="spilled") == 0


def test_fleet_families_equal_the_latest_window(service):
    m, snap = service["m"], service["snap"]
    latest = service["features"][max(service["features"])]
    assert value(m, "aura_tenant_agents", tenant=TENANT) == len(snap["agents"]) == AGENTS
    assert value(m, "aura_tenant_betti", tenant=TENANT, dim="0") == latest["stress_h0_betti_t0.5"]
    assert value(m, "aura_tenant_betti", tenant=TENANT, dim="1") == latest["stress_h1_betti_t0.5"]
    assert value(m, "aura_tenant_unhealthy_ratio", tenant=TENANT) == pytest.approx(latest["unhealthy_frac"])
    assert value(m, "aura_tenant_topology_stability", tenant=TENANT) == pytest.approx(
        topology_stability(latest["stress_wasserstein_h0"], latest["has_previous"]))
    worst = worst_agents(snap, TOP_K)  # the service's default k
    got = {lab["agent"]: v for lab, v in m["aura_agent_error_ratio"]}
    assert got == {a: e for a, e, _ in worst}  # exactly the top-k: bounded cardinality
    with open(ROOT / "models" / "cascade_cfc" / "metrics.json") as fh:
        pr = json.load(fh)["cfc_test"]["pr_auc"]
    assert value(m, "aura_backtest_pr_auc", split="test") == pytest.approx(pr)
    assert "aura_landing_backlog_files" in m and "aura_watermark_lag_seconds" in m


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 5000)), max_size=40), st.integers(0, 50))
def test_worst_agents_are_the_top_k_by_error_then_latency(rows, k):
    snap = {"agents": [f"a{i}" for i in range(len(rows))], "agg_error_rate": [e for e, _ in rows],
            "agg_latency_p99_ms": [p for _, p in rows]}
    got = worst_agents(snap, k)
    assert len(got) == min(k, len(rows))
    keys = [(-e, -p) for _, e, p in got]
    assert keys == sorted(keys)
    if got and len(rows) > k:
        chosen = {a for a, _, _ in got}
        rest = [(e, p / 1000) for a, (e, p) in zip(snap["agents"], rows) if a not in chosen]
        assert all((e, p) <= (got[-1][1], got[-1][2]) for e, p in rest)


@given(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                 st.dictionaries(st.sampled_from(["tenant", "x"]),
                                 st.one_of(st.text(max_size=70), st.integers()))
                 .map(lambda d: json.dumps(d).encode())))
def test_a_dead_letter_tenant_label_is_a_valid_tenant_or_unknown(raw):
    import re

    from schemas import tenant_pattern

    t = observe.dead_tenant(raw)
    assert t == observe.UNKNOWN_TENANT or re.fullmatch(tenant_pattern(), t)


def test_job_metrics_are_off_without_a_multiprocess_directory():
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", "from pipelines import observe; print(observe.ENABLED)"],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
