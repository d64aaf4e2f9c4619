"""The Beam windowing job on the DirectRunner, batch and streaming, against the reference."""

from __future__ import annotations

import glob
import os
import random
import threading
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from pipelines.beam import job
from pipelines.inputs import expand_inputs
from pipelines.stream_source import LandingDirectory, scripted_events
from pipelines.telemetry import LATE, parse_lines
from pipelines.windowing import WindowSpec, snapshots_from_table
from tests.conftest import T0, line, record, write_ndjson
from tests.reference import assert_snapshot_matches, reference_windows
from tests.test_windowing import random_records


def final_panes(out_dir: str) -> dict:
    """{(tenant, window start): snapshot of the last pane} from the job's Parquet output."""
    out: dict = {}
    for path in glob.glob(os.path.join(out_dir, "snapshots", "*", "*.parquet")):
        for snap in snapshots_from_table(pq.read_table(path)):
            key = (snap.tenant, snap.window_start)
            if key not in out or out[key].pane_index < snap.pane_index:
                out[key] = snap
    return out


def dead_letters(out_dir: str) -> list[dict]:
    rows = []
    for path in glob.glob(os.path.join(out_dir, "deadletter", "*.ndjson")):
        with open(path, "rb") as fh:
            rows += [orjson.loads(x) for x in fh if x.strip()]
    return rows


def assert_matches_reference(out_dir: str, records: list[dict], size: float, slide: float | None = None):
    ref = reference_windows(records, size, slide)
    got = final_panes(out_dir)
    assert set(got) == set(ref)
    for key, snap in got.items():
        assert_snapshot_matches(snap, ref[key])


def mixed_files(tmp_path, n_files=4, seed=0) -> tuple[list[str], list[dict], int]:
    """NDJSON files of good records (out of order inside each file) plus bad lines."""
    rng = random.Random(seed)
    good_all, bad = [], 0
    paths = []
    for i in range(n_files):
        recs = random_records(rng, 60)
        for r in recs:  # file i holds minute i
            r["event_time"] += 60 * i
            r["ts"] = r["event_time"]
        rng.shuffle(recs)
        lines = [line({k: v for k, v in r.items() if k != "event_time"}) for r in recs]
        lines += [b"{oops", line(record(error_rate=2.0))]
        bad += 2
        good_all += parse_lines(lines, "x").records
        paths.append(write_ndjson(tmp_path / f"part-{i}.ndjson", lines))
    return paths, good_all, bad


@pytest.mark.parametrize("slide", [None, 5.0])
def test_batch_job_equals_reference_and_reconciles(tmp_path, out_dir, slide):
    paths, good, bad = mixed_files(tmp_path)
    s = job.run_batch(paths, WindowSpec(10.0, slide), out_dir)
    assert (s.read, s.windowed, s.dead_total) == (len(good) + bad, len(good), bad)
    assert s.reconciles
    assert s.dead == {"malformed_json": 4, "out_of_range": 4}
    assert_matches_reference(out_dir, good, 10.0, slide)
    assert len(dead_letters(out_dir)) == bad


def test_streaming_test_stream_watermarks_out_of_order_and_late_data(out_dir):
    """Scripted TestStream: records arrive out of order; the watermark passes window
    [T0, T0+10) at T0+12; a record for it arriving later, within the 30 s lateness, gives an
    updated late pane; one arriving after the watermark passed T0+40 is dead-lettered."""
    spec = WindowSpec(10.0, None, 30.0)
    first = [record(agent="a", t=T0 + 7), record(agent="b", t=T0 + 2), record(agent="a", t=T0 + 15)]
    in_lateness = record(agent="c", t=T0 + 5)
    too_late = record(agent="d", t=T0 + 6)
    later = [record(agent="a", t=T0 + 25), record(agent="b", t=T0 + 45)]
    script = [("lines", "f1", [line(r) for r in first]),
              ("watermark", T0 + 12),
              ("lines", "f2", [line(in_lateness)]),
              ("watermark", T0 + 40.5),
              ("lines", "f3", [line(too_late)] + [line(r) for r in later] + [b"not json"])]
    events, stats = scripted_events(script, spec)
    s = job.run_scripted(events, stats, spec, out_dir)
    assert s.reconciles and (s.read, s.windowed) == (8, 6)
    assert s.dead == {LATE: 1, "malformed_json": 1}
    dead = {d["reason"]: d for d in dead_letters(out_dir)}
    assert orjson.loads(dead[LATE]["raw"])["agent_id"] == "d"
    assert (dead[LATE]["source"], dead[LATE]["position"]) == ("f3", 1)
    windowed = parse_lines([line(r) for r in first + [in_lateness] + later], "x").records
    assert_matches_reference(out_dir, windowed, 10.0)
    panes = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out_dir, "snapshots", "*", "*")))
    start_ms = int(T0 * 1000)
    assert f"window={start_ms}-pane=0.parquet" in panes  # on time, without c
    assert f"window={start_ms}-pane=1.parquet" in panes  # late pane, with c
    first_pane = snapshots_from_table(pq.read_table(
        os.path.join(out_dir, "snapshots", "tenant=acme", f"window={start_ms}-pane=0.parquet")))[0]
    assert first_pane.agents == ["a", "b", "db"] and first_pane.pane_timing == "ON_TIME"


def test_streaming_and_batch_give_the_same_windows(tmp_path):
    paths, good, _ = mixed_files(tmp_path, n_files=3, seed=4)
    spec = WindowSpec(10.0, None, 1000.0)  # nothing late: both engines see every record
    b = job.run_batch(paths, spec, str(tmp_path / "batch"))
    s = job.run_files_streaming(paths, spec, str(tmp_path / "stream"))
    assert (b.read, b.windowed, b.dead) == (s.read, s.windowed, s.dead)
    got_b, got_s = final_panes(str(tmp_path / "batch")), final_panes(str(tmp_path / "stream"))
    assert set(got_b) == set(got_s)
    ref = reference_windows(good, 10.0)
    for key in got_b:
        assert_snapshot_matches(got_b[key], ref[key])
        assert_snapshot_matches(got_s[key], ref[key])


def test_landing_directory_picks_up_files_while_running(tmp_path, out_dir):
    landing = tmp_path / "landing"
    landing.mkdir()
    paths, good, bad = mixed_files(tmp_path, n_files=3, seed=9)
    staged = [Path(p).read_bytes() for p in paths]
    for p in paths:
        os.remove(p)

    def writer():
        for i, data in enumerate(staged):
            tmp = landing / f"f{i}.ndjson.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, landing / f"f{i}.ndjson")  # atomic hand-over
            time.sleep(0.5)
        (landing / "_STOP").touch()

    source = LandingDirectory(str(landing), WindowSpec(10.0, None, 1000.0), poll_interval_s=0.05)
    th = threading.Thread(target=writer)
    th.start()
    s = job.run_landing(source, out_dir)
    th.join()
    assert s.reconciles and s.files == 3
    assert (s.read, s.windowed, s.dead_total) == (len(good) + bad, len(good), bad)
    assert sorted(os.listdir(landing / "_processed")) == ["f0.ndjson", "f1.ndjson", "f2.ndjson"]
    assert_matches_reference(out_dir, good, 10.0)


def test_landing_directory_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="landing directory"):
        LandingDirectory(str(tmp_path / "nope"), WindowSpec())


def test_no_input_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no telemetry files"):
        expand_inputs(str(tmp_path / "*.ndjson"))
