"""Issue 19, "nothing lost whatever dies", on the Flink engine: ``aura run --engine flink`` on
a landing directory (no graph) is killed with SIGKILL (its whole process group: driver, JVM
and Python workers) at a kill point, restarted with ``--restore-from latest`` and fed the
rest of the files; its windows must equal a batch run's over the same files, record for
record (``tests.crash_data``: 30 windows, 18,000 records, no late data: Flink has no allowed
lateness).

Kill points: between files (the 15th file read, a checkpoint taken after it); and, in the
slow suite, mid-stream (a file landed and the job killed a moment later, while it may be
discovering or reading that file or closing the window it completes) and right after a
window's outputs are written, before a checkpoint records it, so the restored job processes
it again and must overwrite, not add, nor commit its verdict twice.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from pipelines.beam.job import run_batch
from pipelines.consensus.audit import audit_logs, committed_before
from pipelines.flink.job import latest_checkpoint
from pipelines.windowing import WindowSpec
from tests.conftest import kill_group
from tests.crash_data import FILES, RECORDS, crash_files, final_counts, land
from tests.test_flink_recovery import ROOT, _dead_committed, _ledgers, _running, _summary, _wait

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def crash(tmp_path_factory):
    """The files and the reference: a batch run over all of them (every record in its window)."""
    base = tmp_path_factory.mktemp("crash")
    files = crash_files(base / "src", late=False)
    out = str(base / "batch")
    summary = run_batch(files, WindowSpec(10.0, None, 30.0), out)
    want = final_counts(out)
    assert len(want) == FILES and sum(want.values()) == RECORDS == summary.windowed == summary.read
    return files, want


def _start(landing: str, out: str, ckpt: str, restore: bool = False) -> tuple[subprocess.Popen, str]:
    """The streaming Flink job (features, prediction and consensus; no graph) as a subprocess
    in a session of its own (as ``test_flink_recovery`` starts it); returns it and its log."""
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--engine", "flink", "--landing", landing,
           "--out", out, "--parallelism", "2", "--checkpoint-dir", ckpt, "--checkpoint-interval", "1",
           "--state-backend", "rocksdb", "--no-graph", "--max-runtime", "300", "--no-progress"]
    if restore:
        cmd += ["--restore-from", "latest"]
    log = os.path.join(os.path.dirname(out), f"job-{time.time_ns()}.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFLINK", "_PYFLINK"))}
    env["PYTHONPATH"] = ROOT
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def _in_checkpoint(ckpt: str, name: str) -> bool:
    """The latest completed checkpoint names the file: the source found it (and, its one
    reader waiting for work, handed it over at once), so a file landed after is read after."""
    chk = latest_checkpoint(ckpt)
    try:
        with open(os.path.join(chk, "_metadata"), "rb") as fh:
            return name.encode() in fh.read()
    except (TypeError, FileNotFoundError):  # none yet, or subsumed while we looked
        return False


def _land_read(files: list[str], first: int, landing: str, out: str, ckpt: str, proc) -> None:
    """Land files[first:] one at a time, each once the one before is being read: file i's
    second half moves the watermark (max event time - 5 s) past window i - 1's end, which
    closes it (its ledger is written); file 0 closes nothing, so the checkpoint shows it."""
    for i in range(first, len(files)):
        land(files[i], landing)
        name = os.path.basename(files[i])
        if i == 0:
            _wait(lambda name=name: _in_checkpoint(ckpt, name), 60, f"reading {name}", proc)
        else:
            _wait(lambda i=i: _ledgers(out) >= i, 60, f"reading {name}", proc)


def _tail(log: str, n: int = 3000) -> str:
    with open(log, "rb") as fh:
        return fh.read()[-n:].decode(errors="replace")


def _closed_at(out: str) -> dict[str, float]:
    """Ledger file -> when its window was processed (the last time, if it was replayed)."""
    got = {}
    for p in glob.glob(os.path.join(out, "windows", "*", "*.json")):
        with open(p, "rb") as fh:
            got[p] = json.loads(fh.read())["closed_at"]
    return got


# files read before the kill, then: None - killed between files, after a checkpoint that
# follows the last one read; seconds - the next file landed and the kill that much later
# (before its window has closed); "emitted" - the next file landed and the kill as soon as
# the window it closes is written (most likely after the last checkpoint: replayed)
KILL_POINTS = {
    "between-files-after-15": (15, None),
    "mid-stream-landing-f08": (8, 0.25),
    "window-emitted-f21": (21, "emitted"),
}
# ~70 s a case, all in `make test-slow`: the default suite's kill-and-restore of the Flink job is
# tests/test_flink_file_order.py (SIGKILL after a checkpoint, files landed while down, restore,
# every window equal to the batch reference) and tests/test_flink_recovery.py (the graph)
SLOW = set(KILL_POINTS)


@pytest.mark.parametrize("point", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p
                                   for p in KILL_POINTS])
def test_sigkill_then_restore_loses_nothing(point, crash, tmp_path, procs):
    files, want = crash
    read_before, how = KILL_POINTS[point]
    landing, out, ckpt = (str(tmp_path / "landing"), str(tmp_path / "run" / "out"),
                          str(tmp_path / "run" / "ckpt"))
    os.makedirs(landing)
    os.makedirs(os.path.dirname(out))
    t0 = time.monotonic()

    proc, _ = _start(landing, out, ckpt)
    procs.append(proc)
    _running(proc, ckpt)
    t_first = time.monotonic()
    _land_read(files[:read_before], 0, landing, out, ckpt, proc)
    _running(proc, ckpt, after=latest_checkpoint(ckpt))  # at least one checkpoint after them
    landed = read_before
    if how is not None:  # the next file, and the kill a moment later
        land(files[landed], landing)
        landed += 1
        if how == "emitted":
            _wait(lambda: _ledgers(out) >= landed - 1, 60, "the window it closes", proc)
        else:
            time.sleep(how)
    name = os.path.basename(files[landed - 1])
    at_kill = {"windows": _ledgers(out), "in checkpoint": _in_checkpoint(ckpt, name)}
    kill_group(proc)
    before = _closed_at(out)
    assert at_kill["windows"] < FILES - 1, "the job finished before it was killed: nothing to recover"
    restored_from = latest_checkpoint(ckpt)
    assert restored_from and os.path.basename(restored_from).startswith("chk-")

    t_restart, restart_wall = time.monotonic(), time.time()
    proc, log = _start(landing, out, ckpt, restore=True)
    procs.append(proc)
    _running(proc, ckpt, after=restored_from)
    t_running = time.monotonic()
    # the files landed before the kill are read again from the checkpoint's positions
    _wait(lambda: _ledgers(out) >= landed - 1, 60, "the files landed before the kill", proc)
    _land_read(files, landed, landing, out, ckpt, proc)
    _wait(lambda: _ledgers(out) >= FILES - 1, 60, "every window but the last", proc)
    open(os.path.join(landing, "_STOP"), "w").close()
    rc = proc.wait(timeout=120)
    t_end = time.monotonic()
    assert rc == 0, f"restarted job exited {rc}:\n{_tail(log)}"
    with open(log, "rb") as fh:
        assert f"restoring from {restored_from}".encode() in fh.read()

    got = final_counts(out)
    lost = sum(max(0, n - got.get(k, 0)) for k, n in want.items())
    extra = sum(max(0, n - want.get(k, 0)) for k, n in got.items())
    summary = _summary(out)
    replayed = sum(1 for p, t in _closed_at(out).items() if p in before and t >= restart_wall)
    print(f"\n[{point}] killed with {at_kill['windows']} windows closed, {name} "
          f"{'in' if at_kill['in checkpoint'] else 'not in'} the latest checkpoint; restored from "
          f"{os.path.basename(restored_from)} ({replayed} written windows replayed): "
          f"records lost {lost}, extra {extra}, windows {len(got)}/{len(want)}, "
          f"records {sum(got.values())}/{RECORDS}; start to running {t_first - t0:.1f} s, "
          f"restart to running {t_running - t_restart:.1f} s, "
          f"restart to drained {t_end - t_restart:.1f} s, case {t_end - t0:.1f} s")

    # every window, every record, once
    assert got == want
    assert len(got) == FILES and sum(got.values()) == RECORDS
    panes = glob.glob(os.path.join(out, "snapshots", "tenant=*", "*.parquet"))
    assert len(panes) == FILES, "a window written more than once (a pane each)"
    # the run's own account agrees: nothing lost, nothing counted twice, no dead letters
    assert summary["reconciles"]
    assert summary["read"] == summary["windowed"] == RECORDS
    assert summary["windows"] == FILES
    assert summary["dead_lettered"] == 0 and summary["dead_by_reason"] == {}
    assert _dead_committed(out) == 0
    assert not glob.glob(os.path.join(out, "window_deadletter", "*", "*.json"))
    # and every window went on through features, prediction and consensus after the restart
    assert summary["feature_rows"] == summary["predictions"] == summary["consensus"]["committed"] == FILES
    # a window processed again after the restore is not committed a second time
    vids = [v.vid for log in audit_logs(out) for v, _ in committed_before(log).values()]
    assert len(vids) == len(set(vids)) == FILES
