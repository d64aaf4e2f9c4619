"""The streaming source's ledger (``pipelines.source_ledger``) and the landing directory's
crash-safe mode, in process: counted once whatever is read twice, retired only when final,
clear errors. The SIGKILL experiments are in ``test_crash_restart_beam.py``."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import failpoints
from pipelines.beam import job
from pipelines.source_ledger import FileRead, SourceLedger, pane_path
from pipelines.stream_source import LandingDirectory
from pipelines.windowing import WindowSpec
from tests.conftest import T0, line, record, write_ndjson
from tests.crash_data import final_counts, land

SIZE_MS, LATE_MS = 10_000, 30_000


def _pane(out: str, tenant: str, w: int, pane: int, n: int) -> None:
    path = pane_path(out, "snapshots", tenant, w, pane)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"n_records": [n]}), path)


files_st = st.lists(st.dictionaries(st.integers(0, 5), st.integers(1, 50), min_size=1, max_size=3),
                    min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(files=files_st, ops=st.lists(st.tuples(st.sampled_from(["read", "crash", "pane", "short", "settle"]),
                                              st.integers(0, 5)), max_size=40))
def test_counted_once_and_retired_only_when_final(tmp_path_factory, files, ops):
    out = str(tmp_path_factory.mktemp("ledger"))
    led = SourceLedger(out, SIZE_MS, LATE_MS)
    expected: Counter = Counter()  # what the windows must hold: every file once
    read: set[int] = set()
    seen: dict[int, Counter] = {}
    for op, i in ops:
        f = i % len(files)
        if op == "read":  # as the source does: a new file's records for a final window are late;
            if f not in read:  # a file read again is decided as the first time
                final = led.final_windows()
                seen[f] = Counter({("t", w * SIZE_MS): n for w, n in files[f].items()
                                   if ("t", w * SIZE_MS) not in final})
                expected.update(seen[f])
            windows = seen[f]
            late = 1 + sum(files[f].values()) - sum(windows.values())
            led.record(FileRead(f"f{f}:x", f"f{f}", 1, sum(files[f].values()) + 1, sum(windows.values()),
                                Counter(late=late), {}, {}, {}, windows))
            read.add(f)
        elif op == "crash":  # a new process on the same output; the old one never closed
            led = SourceLedger(out, SIZE_MS, LATE_MS)
        elif op in ("pane", "short") and expected:
            (t, w), n = sorted(expected.items())[i % len(expected)]
            if (t, w) not in led.final_windows():  # the engine never writes a final window again
                _pane(out, t, w, 0, n - (op == "short"))
        elif op == "settle":
            led.settle(1e12, ())
            for t, w in led.final_windows():  # final: the last pane holds all handed to the window
                got = pq.read_table(pane_path(out, "snapshots", t, w, 0)).column(0)[0].as_py()
                assert got == expected[(t, w)]
    tot = led.totals()
    assert tot["read"] == sum(sum(files[f].values()) + 1 for f in read)  # each file once
    assert tot["reconciles"] == (tot["windows_short"] == 0)
    final = led.final_windows()
    retired = {r[0] for r in led.db.execute("SELECT name FROM files WHERE retired = 1")}
    for name in retired:  # retired: every window it feeds is final
        assert {("t", w * SIZE_MS) for w in files[int(name[1:])]} <= final


def _file(directory, name: str, second: int, agents: int = 5) -> str:
    lines = [line(record(agent=f"a{a}", t=T0 + second + 0.5)) for a in range(agents)]
    return write_ndjson(os.path.join(str(directory), name), lines)


def _landing(landing: str, out: str) -> LandingDirectory:
    return LandingDirectory(landing, WindowSpec(10.0, None, 30.0), poll_interval_s=0.05,
                            idle_timeout_s=0.5, out_dir=out)


def test_a_file_delivered_again_after_it_retired_is_counted_once(tmp_path):
    src, landing, out = tmp_path / "src", str(tmp_path / "landing"), str(tmp_path / "out")
    src.mkdir()
    os.makedirs(landing)
    a, b = _file(src, "a.ndjson", 1), _file(src, "b.ndjson", 45)
    land(a, landing)
    land(b, landing)
    s1 = job.run_landing(_landing(landing, out), out)
    assert s1.reconciles and s1.read == 10 and sorted(os.listdir(os.path.join(landing, "_processed"))) == [
        "a.ndjson", "b.ndjson"]
    os.remove(os.path.join(landing, "_processed", "a.ndjson"))
    land(a, landing)  # the producer retried: same name, same bytes
    s2 = job.run_landing(_landing(landing, out), out)
    led = s2.ledger
    assert (s2.read, s2.windowed, s2.dead_total, led["runs"], led["file_reads"]) == (10, 10, 0, 2, 2)
    w0, w4 = int(T0 * 1000), int((T0 + 40) * 1000)
    assert s2.reconciles and final_counts(out) == {("acme", w0): 5, ("acme", w4): 5}


def test_records_for_a_window_final_in_an_earlier_run_are_late_not_a_stale_pane(tmp_path):
    src, landing, out = tmp_path / "src", str(tmp_path / "landing"), str(tmp_path / "out")
    src.mkdir()
    os.makedirs(landing)
    land(_file(src, "a.ndjson", 1), landing)
    job.run_landing(_landing(landing, out), out)  # ends: window [0, 10) fired its final pane
    land(_file(src, "b.ndjson", 2, agents=3), landing)  # more for that window, in a new run
    s = job.run_landing(_landing(landing, out), out)
    assert (s.read, s.windowed, dict(s.dead)) == (8, 5, {"late": 3}) and s.reconciles
    assert final_counts(out) == {("acme", int(T0 * 1000)): 5}
    with open(os.path.join(out, "deadletter", os.listdir(os.path.join(out, "deadletter"))[0])) as fh:
        assert "windows closed" in json.loads(fh.readline())["detail"]


def test_a_file_not_yet_safe_that_vanished_is_a_clear_error(tmp_path):
    src, landing, out = tmp_path / "src", str(tmp_path / "landing"), str(tmp_path / "out")
    src.mkdir()
    os.makedirs(landing)
    land(_file(src, "a.ndjson", 1), landing)
    source = _landing(landing, out)
    events = source.events()
    next(events)  # a.ndjson is read and in the ledger; the process dies here (never finishes)
    os.remove(os.path.join(landing, "a.ndjson"))
    with pytest.raises(FileNotFoundError, match="a.ndjson.*not yet safe.*put it back"):
        list(_landing(landing, out).events())


def test_failpoint_spec_errors_are_clear(monkeypatch):
    assert failpoints.parse("a.b=3, c=1") == {"a.b": 3, "c": 1}
    for bad in ("a", "a=0", "=2", "a=x"):
        with pytest.raises(ValueError, match="AURA_FAILPOINTS"):
            failpoints.parse(bad)
    monkeypatch.setenv(failpoints.ENV, "other=1")
    t = time.monotonic()
    failpoints.hit("source.records_sent")  # not armed: nothing happens
    assert time.monotonic() - t < 1
