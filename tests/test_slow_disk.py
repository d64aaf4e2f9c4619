"""A slow disk under the streaming job's output: a FUSE pass-through (``tests/slow_fs.py``)
that makes every write, fsync, create and rename wait 5 ms. ``aura run --landing`` still
finishes, nothing is lost (the windows equal a batch run's) and it says what it did; the
slowdown against the same run on a normal disk is printed. Needs FUSE (``make test``
installs Debian's fuse and libfuse2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from pipelines.beam import job
from pipelines.service.processes import wait_until
from pipelines.windowing import WindowSpec
from tests.crash_data import crash_files, final_counts, land

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_FILES, DELAY_MS = 4, 5


def _run(landing: str, out: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--landing", landing, "--out", out, "--no-graph",
           "--no-progress", "--idle-timeout", "2"]
    t = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    return done, time.monotonic() - t


@pytest.fixture
def slow_disk(tmp_path):
    assert os.path.exists("/dev/fuse"), "no /dev/fuse: the kernel's FUSE device is needed"
    assert shutil.which("fusermount"), "no fusermount: `make test` installs Debian's fuse and libfuse2"
    backing, mnt = tmp_path / "backing", tmp_path / "slow"
    backing.mkdir()
    mnt.mkdir()
    fs = subprocess.Popen([sys.executable, "-m", "tests.slow_fs", str(backing), str(mnt), "--delay-ms",
                           str(DELAY_MS)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if not wait_until(lambda: os.path.ismount(mnt) or fs.poll() is not None, 15) or fs.poll() is not None:
        why = fs.stderr.read() if fs.poll() is not None else "not mounted after 15 s"
        raise AssertionError(f"cannot mount the slow FUSE file system: {why}")
    yield str(mnt)
    subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True)
    fs.wait(timeout=10)


def test_a_slow_output_disk_slows_the_job_and_loses_nothing(slow_disk, tmp_path):
    files = crash_files(tmp_path / "src", late=False)[:N_FILES]
    runs = {}
    for name, out in (("normal disk", str(tmp_path / "fast-out")), ("slow disk", slow_disk)):
        landing = tmp_path / f"landing-{name.split()[0]}"
        landing.mkdir()
        for f in files:
            land(f, str(landing))
        done, took = _run(str(landing), out)
        assert done.returncode == 0, done.stderr[-2000:]
        with open(os.path.join(out, "summary.json")) as fh:
            summary = json.load(fh)
        assert summary["reconciles"] and summary["read"] == summary["windowed"] == N_FILES * 600
        assert len(os.listdir(landing / "_processed")) == N_FILES
        runs[name] = (final_counts(out), took)
    ref = tmp_path / "batch"
    job.run_batch(files, WindowSpec(10.0, None, 30.0), str(ref))
    assert runs["slow disk"][0] == runs["normal disk"][0] == final_counts(str(ref))
    ratio = runs["slow disk"][1] / runs["normal disk"][1]
    print(f"\nslow disk ({DELAY_MS} ms a write/fsync/create/rename): {runs['slow disk'][1]:.1f} s, "
          f"normal disk {runs['normal disk'][1]:.1f} s (x{ratio:.1f}); windows equal the batch run's")
