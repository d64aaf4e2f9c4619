"""A full disk under the streaming job's output (a 400 KB tmpfs): ``aura run --landing``
stops with a clear one-line error naming the cause, no file leaves the landing directory,
and once the disk has room the same command loses nothing (the windows equal a batch run's).
Needs root (mount), as `make test` and CI run."""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.beam import job
from pipelines.windowing import WindowSpec
from tests.crash_data import crash_files, final_counts, land

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mount(path: str, size: str, remount: bool = False) -> subprocess.CompletedProcess:
    opts = f"remount,size={size}" if remount else f"size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path], capture_output=True, text=True)


def _run(landing: str, out: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--landing", landing, "--out", out, "--no-graph",
           "--no-progress", "--idle-timeout", "2"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_a_full_output_disk_stops_clearly_and_loses_nothing(tmp_path):
    out, landing = tmp_path / "out", tmp_path / "landing"
    out.mkdir()
    landing.mkdir()
    m = _mount(str(out), "400k")
    assert m.returncode == 0, f"cannot mount a tmpfs (the tests run as root, as CI does): {m.stderr.strip()}"
    try:
        files = crash_files(tmp_path / "src")
        for f in files[:12]:
            land(f, str(landing))
        first = _run(str(landing), str(out))
        assert first.returncode == 3, first.stderr[-2000:]
        last = first.stderr.strip().splitlines()[-2:]
        assert "No space left on device" in last[0] and "lose nothing" in last[1], last
        assert os.listdir(landing / "_processed") == []  # nothing final: every file stayed

        assert _mount(str(out), "64m", remount=True).returncode == 0
        for f in files[12:]:
            land(f, str(landing))
        second = _run(str(landing), str(out))
        assert second.returncode == 0, second.stderr[-2000:]
        ref = tmp_path / "batch"
        job.run_batch(files, WindowSpec(10.0, None, 30.0), str(ref))
        assert final_counts(str(out)) == final_counts(str(ref))
        assert len(os.listdir(landing / "_processed")) == len(files)
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)
