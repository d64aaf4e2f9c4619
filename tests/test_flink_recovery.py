"""Checkpoints and recovery of the Flink job: ``aura run --engine flink`` on a landing
directory as a subprocess, killed with SIGKILL (its whole process group: driver, JVM and
Python workers) after some checkpoints, restarted from the latest ``chk-*``; every window is
emitted, the graph in the Bolt server equals an uninterrupted run's, nothing is lost or
counted twice."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from neo4j import GraphDatabase

from pipelines.flink.job import latest_checkpoint
from pipelines.graph.server import EmbeddedGraphServer
from pipelines.graph.sink import GraphSpec
from pipelines.graph.target import spill_path
from tests.conftest import kill_group
from tests.flink_data import BAD_LINES, dead_reasons, feature_vectors, telemetry_files
from tests.test_graph_sink import dump, run

if importlib.util.find_spec("pyflink") is None:  # never imported in the test process
    pytest.skip("apache-flink is not installed", allow_module_level=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOWS, CLOSED = 16, 14  # 2 tenants x 8 windows; the last one per tenant closes on drain


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = EmbeddedGraphServer(str(tmp_path_factory.mktemp("graph"))).start()
    yield srv
    srv.stop()


def _start(srv, landing: str, out: str, ckpt: str, restore: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--engine", "flink", "--landing", landing,
           "--out", out, "--parallelism", "2", "--checkpoint-dir", ckpt, "--checkpoint-interval", "1",
           "--state-backend", "rocksdb", "--graph-uri", srv.uri, "--graph-user", srv.auth[0],
           "--graph-password", srv.auth[1], "--graph-epsilon", "0", "--graph-refresh-windows", "1",
           "--max-runtime", "240", "--no-progress"]
    if restore:
        cmd += ["--restore-from", "latest"]
    log = open(os.path.join(os.path.dirname(out), f"job-{time.time_ns()}.log"), "wb")  # noqa: SIM115
    # a PyFlink driver earlier in this process (the parity test) leaves PYFLINK_* variables
    # that tell a new process it is a worker: start the job without them
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFLINK", "_PYFLINK"))}
    env["PYTHONPATH"] = ROOT
    # a session of its own: SIGKILL to the group takes the JVM and the Python workers too
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _ledgers(out: str) -> int:
    return len(glob.glob(os.path.join(out, "windows", "*", "*.json")))


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def _land(src: str, landing: str) -> None:
    """Drop a file as a producer would: write a hidden name, then rename."""
    tmp = os.path.join(landing, "." + os.path.basename(src))
    shutil.copy(src, tmp)
    os.replace(tmp, os.path.join(landing, os.path.basename(src)))


def _finish(proc: subprocess.Popen, landing: str, out: str) -> None:
    """All files read (every window but the last per tenant closed), then drain and stop."""
    _wait(lambda: _ledgers(out) >= CLOSED, 180, "closed windows", proc)
    open(os.path.join(landing, "_STOP"), "w").close()
    assert proc.wait(timeout=120) == 0


def _running(proc: subprocess.Popen, ckpt: str, after: str | None = None) -> None:
    """Wait until the job completes a checkpoint (newer than ``after``): it is running."""
    _wait(lambda: (latest_checkpoint(ckpt) or after) != after, 120, "a running job", proc)


def _dead_committed(out: str) -> int:
    n = 0
    for p in glob.glob(os.path.join(out, "deadletter", "*.ndjson")):  # committed part files only
        with open(p, "rb") as fh:
            n += sum(1 for x in fh if x.strip())
    return n


def _land_running(files: list[str], landing: str, out: str, before: int, proc) -> None:
    """Land files one at a time, each once the job has read the one before (its bad lines,
    at its end, are committed dead letters), as a live producer would (a backlog is read in
    landing order too: ``tests/test_flink_file_order.py``)."""
    for i, f in enumerate(files):
        _land(f, landing)
        want = len(BAD_LINES) * (before + i + 1)
        _wait(lambda want=want: _dead_committed(out) >= want, 120, f"reading {f}", proc)


def _graph(srv) -> dict:
    """Every node and relationship per tenant; certificate properties left out (each worker's
    committee signs with its own fresh keys, so a re-run's certificates differ)."""
    with GraphDatabase.driver(srv.uri, auth=srv.auth) as driver:
        out = {}
        for t in ("acme", "beta"):
            nodes, rels = dump(driver, t)
            strip = [json.loads(x) for x in nodes]
            for n in strip:
                n["props"] = {k: v for k, v in n["props"].items()
                              if k != "certificate" and not k.startswith("qc_")}
            out[t] = (sorted(json.dumps(n, sort_keys=True) for n in strip), rels)
        certified = run(driver, "MATCH (p:Prediction) WHERE p.qc_height IS NOT NULL RETURN count(p) AS n")
        out["certified"] = certified[0]["n"]
    return out


def _same_graph(got: dict, want: dict, tmp_path, spilled: dict) -> None:
    """Graphs equal; on a difference, the differing entries are named (and both graphs saved)."""
    if got == want:
        return
    with open(tmp_path / "graphs.json", "w") as fh:
        json.dump({"recovered": got, "reference": want}, fh, indent=1)
    lines = []
    for t in ("acme", "beta"):
        for i, kind in enumerate(("nodes", "relationships")):
            g, w = set(got[t][i]), set(want[t][i])
            lines += [f"{t} {kind} only recovered: {x}" for x in sorted(g - w)[:5]]
            lines += [f"{t} {kind} only reference: {x}" for x in sorted(w - g)[:5]]
    if got["certified"] != want["certified"]:
        lines.append(f"certified {got['certified']} != {want['certified']}")
    raise AssertionError(f"graphs differ (spilled batches replayed: {spilled}):\n" + "\n".join(lines))


def _deliver_spilled(srv, out: str) -> int:
    """Batches the graph server refused under load were spilled, as in any run: deliver
    them as the next run would (``aura sink replay``), so the graph is complete. Returns how
    many there were."""
    path = spill_path(out)
    if not os.path.exists(path):
        return 0
    sink = GraphSpec(srv.uri, *srv.auth, spill_path=path).build().open()
    try:
        report = sink.replay()
    finally:
        sink.close()
    assert report.failed == 0, report.render()
    return report.delivered


def _wipe(srv) -> None:
    with GraphDatabase.driver(srv.uri, auth=srv.auth) as driver:
        run(driver, "MATCH (n) DETACH DELETE n")


def _summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


def test_sigkill_mid_stream_then_restore_from_latest_checkpoint(tmp_path, server, procs):
    files, bad = telemetry_files(tmp_path / "src")

    # an uninterrupted run: the reference
    land_a, out_a = str(tmp_path / "land_a"), str(tmp_path / "a" / "out")
    ckpt_a = str(tmp_path / "a" / "ckpt")
    os.makedirs(land_a)
    os.makedirs(os.path.dirname(out_a))
    procs.append(proc := _start(server, land_a, out_a, ckpt_a))
    _running(proc, ckpt_a)
    _land_running(files, land_a, out_a, 0, proc)
    _finish(proc, land_a, out_a)
    spilled = {"reference": _deliver_spilled(server, out_a)}
    reference = _graph(server)
    ref_summary = _summary(out_a)
    _wipe(server)

    # killed mid-stream after some checkpoints, restarted from the latest
    land_b, out_b, ckpt = str(tmp_path / "land_b"), str(tmp_path / "b" / "out"), str(tmp_path / "b" / "ckpt")
    os.makedirs(land_b)
    os.makedirs(os.path.dirname(out_b))
    procs.append(proc := _start(server, land_b, out_b, ckpt))
    _running(proc, ckpt)
    _land_running(files[:3], land_b, out_b, 0, proc)
    _wait(lambda: _ledgers(out_b) >= 4, 120, "first windows", proc)
    _running(proc, ckpt, after=latest_checkpoint(ckpt))  # one more checkpoint after them
    killed_at = _ledgers(out_b)
    kill_group(proc)
    assert killed_at < CLOSED, "the job finished before it was killed: nothing to recover"
    restored_from = latest_checkpoint(ckpt)
    assert restored_from and os.path.basename(restored_from).startswith("chk-")
    procs.append(proc := _start(server, land_b, out_b, ckpt, restore=True))
    _running(proc, ckpt, after=restored_from)
    _land_running(files[3:], land_b, out_b, 3, proc)
    _finish(proc, land_b, out_b)
    spilled["recovered"] = _deliver_spilled(server, out_b)
    recovered = _graph(server)
    summary = _summary(out_b)

    # every window, the same features and predictions, the same graph
    assert ref_summary["windows"] == summary["windows"] == WINDOWS
    fa, fb = feature_vectors(out_a), feature_vectors(out_b)
    assert set(fa) == set(fb) and len(fa) == WINDOWS
    for key in fa:
        np.testing.assert_allclose(fb[key], fa[key], rtol=1e-9, atol=1e-9)
    _same_graph(recovered, reference, tmp_path, spilled)
    assert recovered["certified"] == WINDOWS
    # nothing lost, nothing counted twice
    for s in (ref_summary, summary):
        assert s["reconciles"] and s["read"] == s["windowed"] + s["dead_lettered"]
    assert summary["read"] == ref_summary["read"]
    assert summary["windowed"] == ref_summary["windowed"]
    assert summary["dead_by_reason"] == ref_summary["dead_by_reason"] == dead_reasons(out_b)
    assert "late" not in summary["dead_by_reason"]
    assert summary["dead_lettered"] == bad
    assert summary["predictions"] == summary["consensus"]["committed"] == WINDOWS
