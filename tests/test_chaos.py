"""The chaos suite (``make chaos``, ``bench/bench_chaos.py``), as a slow test: the whole
service under the testbed's load, the service (once in the middle of a workflow step), its
streaming job, spool worker and graph server, and Alertmanager each killed with SIGKILL at a
random moment; after the restarts and the drain nothing acknowledged is lost and nothing is
counted, committed, alerted or acted on twice."""

from __future__ import annotations

import pytest

from bench.bench_chaos import KILLS, run_chaos


@pytest.mark.slow
def test_every_component_killed_under_load_nothing_lost_or_duplicated(tmp_path):
    r = run_chaos(str(tmp_path), load_s=150, seed=2)
    killed = {e.get("target") for e in r["kills"]}
    assert set(KILLS) <= killed and any(e["event"].startswith("service died") for e in r["kills"])
    assert r["failures"] == [], r["failures"]
    s, rec, v = r["spans"], r["records"], r["verdicts"]
    assert s["acknowledged"] > 5000 and s["lost"] == 0 and s["pending"] == 0
    assert rec["reconciles"] and rec["landed"] == rec["read"] and rec["runs"] >= 3
    assert v["predictions"] >= 10 and v["committed_twice"] == 0 and v["graph_predictions"] == v["predictions"]
    assert r["interventions"]["acted"] >= 1 and r["interventions"]["lost"] == 0
    assert r["service_exit_code"] == 0
