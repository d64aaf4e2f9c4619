"""Issue 21, item 3, on the Flink engine: event time per tenant. Two 30-agent tenants ten
minutes apart in event time, their files landed interleaved in one landing directory: each
tenant's windows close on its own watermark (and, idle, after ``tenant_idle_timeout_s``),
so the tenant behind is not dead-lettered ``late`` (a record of a window closed for its own
tenant still is); every (tenant, window) holds the records
a batch run puts there. The same files as a bounded input give the same windows."""

from __future__ import annotations

import glob
import importlib.util
import os
import pickle
import subprocess
import sys
import time

import pytest

from pipelines.beam.job import run_batch
from pipelines.flink.job import FlinkSpec
from pipelines.flink.window_stage import StageSpec
from pipelines.windowing import WindowSpec
from tests.conftest import T0, line, record, write_ndjson
from tests.crash_data import final_counts, land
from tests.flink_data import dead_reasons
from tests.test_crash_restart_flink import _in_checkpoint
from tests.test_flink_recovery import ROOT, _ledgers, _running, _summary, _wait

if importlib.util.find_spec("pyflink") is None:  # never imported in the test process
    pytest.skip("apache-flink is not installed", allow_module_level=True)
pytestmark = pytest.mark.timeout(300)

AGENTS, FILES, AHEAD = 30, 4, 600.0  # files per tenant; tenant "ahead" starts AHEAD s after "early"
TENANTS = {"early": T0, "ahead": T0 + AHEAD}
IDLE_S = 4.0


def _files(directory) -> list[str]:
    """10-second files (one window each) of both tenants, in landing order: early 0, ahead 0,
    early 1, ahead 1, ..."""
    os.makedirs(directory, exist_ok=True)
    out = []
    for i in range(FILES):
        for tenant, t0 in TENANTS.items():
            lines = [line(record(agent=f"a{a}", t=t0 + 10 * i + s + 0.25 * (a % 4), tenant=tenant,
                                 cpu=round((a + s) % 10 / 10, 1),
                                 calls=[{"dst": f"a{(a + 1) % AGENTS}", "count": 3, "errors": 0,
                                         "latency_ms": 2.0}]))
                     for s in range(10) for a in range(AGENTS)]
            out.append(write_ndjson(os.path.join(str(directory), f"f{i}-{tenant}.ndjson"), lines))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The files and the reference: a batch run over all of them (every record in its window)."""
    base = tmp_path_factory.mktemp("tenant_time")
    files = _files(base / "src")
    out = str(base / "batch")
    summary = run_batch(files, WindowSpec(10.0, None, 0.0), out)
    want = final_counts(out)
    assert len(want) == 2 * FILES and summary.windowed == summary.read == 2 * FILES * AGENTS * 10
    return files, want


def _spec(base, source: str, continuous: bool) -> str:
    """A pickled FlinkSpec (no features: the windows are what is checked)."""
    out = str(base / "out")
    spec = FlinkSpec(source, StageSpec(out, 10_000, 10_000), parallelism=2, continuous=continuous,
                     monitor_interval_s=0.2, checkpoint_dir=str(base / "ckpt"), checkpoint_interval_s=1.0,
                     max_runtime_s=200, tenant_idle_timeout_s=IDLE_S)
    path = str(base / "spec.pkl")
    with open(path, "wb") as fh:
        pickle.dump(spec, fh)
    return path


def _start(spec: str, log: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFLINK", "_PYFLINK"))}
    env["PYTHONPATH"] = ROOT
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "pipelines.flink.job", spec], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _check(out: str, want: dict, late: int = 0) -> None:
    assert dead_reasons(out) == ({"late": late} if late else {})  # no other dead letters
    assert not glob.glob(os.path.join(out, "window_deadletter", "*", "*.json"))
    assert final_counts(out) == want
    summary = _summary(out)
    assert summary["reconciles"] and summary["windowed"] == summary["read"] - late == sum(want.values())


def test_tenants_apart_in_event_time_each_close_on_their_own_watermark(data, tmp_path, procs):
    files, want = data
    landing = str(tmp_path / "landing")
    os.makedirs(landing)
    proc = _start(_spec(tmp_path, landing, continuous=True), str(tmp_path / "job.log"))
    procs.append(proc)
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    _running(proc, ckpt)
    for f in files:  # each file once the one before is being read (in order per tenant)
        land(f, landing)
        name = os.path.basename(f)
        _wait(lambda name=name: _in_checkpoint(ckpt, name), 60, f"reading {name}", proc)
    # the last window of each tenant closes on the tenant's idleness, before any drain
    deadline = time.monotonic() + 6 * IDLE_S
    while _ledgers(out) < 2 * FILES and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.25)
    closed_on_idleness = _ledgers(out)
    # records of a window that closed for their tenant are still late
    late = write_ndjson(tmp_path / "late.ndjson", [line(record(agent=f"a{a}", t=T0 + 5, tenant="early"))
                                                   for a in range(AGENTS)])
    land(late, landing)
    _wait(lambda: _in_checkpoint(ckpt, "late.ndjson"), 60, "reading late.ndjson", proc)
    open(os.path.join(landing, "_STOP"), "w").close()
    assert proc.wait(timeout=120) == 0
    _check(out, want, late=AGENTS)
    assert closed_on_idleness == 2 * FILES


def test_bounded_input_fires_every_window_at_its_end(data, tmp_path, procs):
    files, want = data
    proc = _start(_spec(tmp_path, os.path.dirname(files[0]), continuous=False), str(tmp_path / "job.log"))
    procs.append(proc)
    assert proc.wait(timeout=180) == 0
    _check(str(tmp_path / "out"), want)
