"""Issue 19 on the Flink engine: files that wait together in the landing directory - a backlog
when the job starts, or landed while it was down and found when it is restored from a
checkpoint - are read in landing order, (modification time, path), as Beam's landing source
reads them, whatever their names or the order the directory lists them in. Each file holds
the next 10 s of one tenant's event time, so an older file read after a newer one would be
``late`` (its windows closed for the tenant's watermark)."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from pipelines.beam.job import run_batch
from pipelines.flink.job import latest_checkpoint
from pipelines.windowing import WindowSpec
from tests.conftest import T0, kill_group, line, record, write_ndjson
from tests.crash_data import final_counts, land
from tests.flink_data import dead_reasons
from tests.test_flink_recovery import ROOT, _running, _summary, _wait
from tests.test_flink_tenant_time import _spec

if importlib.util.find_spec("pyflink") is None:  # never imported in the test process
    pytest.skip("apache-flink is not installed", allow_module_level=True)
pytestmark = pytest.mark.timeout(240)

AGENTS, SECONDS, FILES = 20, 10, 8
# landing order i = 0..7 (modification times ascending); names sort the other way, and each
# backlog is created in an order that is neither, so no listing order equals landing order
BEFORE_START, WHILE_DOWN = (2, 0, 3, 1), (6, 4, 7, 5)


def _files(directory) -> list[str]:
    """One file per 10 s of event time of tenant ``acme``, in landing order."""
    os.makedirs(directory, exist_ok=True)
    out = []
    for i in range(FILES):
        lines = [line(record(agent=f"a{a}", t=T0 + SECONDS * i + s + 0.25 * (a % 4), tenant="acme"))
                 for s in range(SECONDS) for a in range(AGENTS)]
        out.append(write_ndjson(os.path.join(str(directory), f"{FILES - 1 - i:02d}-acme.ndjson"), lines))
    return out


def _land_backlog(files: list[str], created: tuple[int, ...], landing: str, base: float) -> None:
    """Land files as a producer would (hidden name, then rename), in ``created`` order, with
    modification times in landing order (file i at ``base + i``)."""
    for i in created:
        land(files[i], landing)
        os.utime(os.path.join(landing, os.path.basename(files[i])), (base + i, base + i))


def _accounted(out: str) -> int:
    """Records windowed (window ledgers) plus committed dead letters."""
    n = 0
    for p in glob.glob(os.path.join(out, "deadletter", "*.ndjson")):
        with open(p, "rb") as fh:
            n += sum(1 for x in fh if x.strip())
    for p in glob.glob(os.path.join(out, "windows", "*", "*.json")):
        with open(p, "rb") as fh:
            n += json.loads(fh.read())["n_fresh"]
    return n


def _start(spec: str, log: str, restore: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFLINK", "_PYFLINK"))}
    env["PYTHONPATH"] = ROOT
    cmd = [sys.executable, "-m", "pipelines.flink.job", spec] + (["--restore", restore] if restore else [])
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_a_backlog_is_read_in_landing_order_at_start_and_after_a_restore(tmp_path, procs):
    files = _files(tmp_path / "src")
    per_file, total = SECONDS * AGENTS, FILES * SECONDS * AGENTS
    batch = run_batch(files, WindowSpec(10.0, None, 0.0), str(tmp_path / "batch"))
    want = final_counts(str(tmp_path / "batch"))
    assert batch.windowed == total and len(want) == FILES

    landing, out, ckpt = str(tmp_path / "landing"), str(tmp_path / "out"), str(tmp_path / "ckpt")
    os.makedirs(landing)
    spec = _spec(tmp_path, landing, continuous=True)
    base = time.time() - 60
    _land_backlog(files, BEFORE_START, landing, base)  # found together in the job's first scan
    procs.append(proc := _start(spec, str(tmp_path / "job-1.log")))
    # every record windowed (the last window closes on the tenant's idleness) or dead-lettered
    _wait(lambda: _accounted(out) >= len(BEFORE_START) * per_file, 120, "the first backlog", proc)
    _running(proc, ckpt, after=latest_checkpoint(ckpt))  # a checkpoint after it
    kill_group(proc)
    proc.wait()

    _land_backlog(files, WHILE_DOWN, landing, base)  # found together when the job is restored
    procs.append(proc := _start(spec, str(tmp_path / "job-2.log"), restore=latest_checkpoint(ckpt)))
    _wait(lambda: _accounted(out) >= total, 120, "every record accounted for", proc)
    open(os.path.join(landing, "_STOP"), "w").close()
    assert proc.wait(timeout=120) == 0
    assert dead_reasons(out) == {}  # no `late`: each file was read after the older ones
    assert final_counts(out) == want
    summary = _summary(out)
    assert summary["reconciles"] and summary["windowed"] == summary["read"] == total
