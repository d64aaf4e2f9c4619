"""Per-tenant event time (issue 21, item 3): each tenant's windows close on its own watermark.

The user's experiment: two 30-agent tenants ten minutes apart in event time, their files
interleaved in one stream. With one watermark for the stream every record of the earlier
tenant was ``late``; now each tenant is windowed as if it ran alone. Then the idleness
timeout on a live landing directory, and unit + property tests of ``pipelines.tenant_time``.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sqlite3
import threading
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.beam import job, source_panes
from pipelines.source_ledger import file_key
from pipelines.stream_source import Heartbeat, LandingDirectory
from pipelines.tenant_time import LATE_PANE, ON_TIME, Pane, TenantWindows
from pipelines.windowing import WindowSpec, ms
from tests.conftest import T0, line, record, write_ndjson
from tests.crash_data import final_counts, land

AGENTS, FILE_S, N_FILES = 30, 10, 4
SPEC = WindowSpec(10.0, None, 30.0)


def tenant_files(directory, tenant: str, t0: float, n_files: int = N_FILES, prefix: str = "") -> list[str]:
    """``n_files`` 10-second files of ``tenant``: 30 agents reporting once a second from ``t0``."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(n_files):
        lines = [line(record(agent=f"a{a}", t=t0 + i * FILE_S + s + 0.5, tenant=tenant,
                             cpu=round((a + s) % 10 / 10, 1),
                             calls=[{"dst": f"a{(a + 1) % AGENTS}", "count": 3, "errors": 0,
                                     "latency_ms": 2.0}]))
                 for s in range(FILE_S) for a in range(AGENTS)]
        paths.append(write_ndjson(os.path.join(str(directory), f"{prefix}{tenant}-{i:02d}.ndjson"), lines))
    return paths


@pytest.fixture(scope="module")
def two_tenants(tmp_path_factory) -> tuple[list[str], dict]:
    """(files of tenants early (T0) and later (T0 + 600 s) interleaved, per-tenant reference)."""
    d = tmp_path_factory.mktemp("tenants")
    early = tenant_files(d / "src", "early", T0)
    later = tenant_files(d / "src", "later", T0 + 600)
    mixed = [p for pair in zip(early, later) for p in pair]
    reference = final_counts_of(job.run_files_streaming(early, SPEC, str(d / "alone-early")).out_dir)
    reference |= final_counts_of(job.run_files_streaming(later, SPEC, str(d / "alone-later")).out_dir)
    assert len(reference) == 2 * N_FILES and sum(reference.values()) == 2 * N_FILES * AGENTS * FILE_S
    return mixed, reference


def final_counts_of(out_dir: str) -> dict:
    return final_counts(out_dir)


def land_in_order(paths: list[str], landing: str) -> None:
    """Land ``paths`` under names that sort (and so are read) in this order."""
    for i, p in enumerate(paths):
        tmp = os.path.join(landing, f".{i:02d}")
        shutil.copy(p, tmp)
        os.replace(tmp, os.path.join(landing, f"{i:02d}-{os.path.basename(p)}"))


def test_interleaved_tenants_ten_minutes_apart_lose_nothing_to_lateness(two_tenants, out_dir):
    mixed, reference = two_tenants
    s = job.run_files_streaming(mixed, SPEC, out_dir)
    assert s.reconciles and s.dead_total == 0 and s.dead.get("late", 0) == 0
    assert (s.read, s.windowed) == (sum(reference.values()), sum(reference.values()))
    assert final_counts(out_dir) == reference
    assert s.windows == len(reference)


def test_interleaved_tenants_through_a_crash_safe_landing_directory(two_tenants, tmp_path):
    mixed, reference = two_tenants
    landing, out = str(tmp_path / "landing"), str(tmp_path / "out")
    os.makedirs(landing)
    land_in_order(mixed, landing)
    source = LandingDirectory(landing, SPEC, poll_interval_s=0.05, idle_timeout_s=0.3, out_dir=out)
    s = job.run_landing(source, out)
    assert s.reconciles and s.dead_total == 0, s.dead
    assert final_counts(out) == reference
    assert s.ledger["files_retired"] == len(mixed) and s.ledger["windows_final"] == len(reference)


def test_a_replay_after_a_crash_decides_lateness_per_tenant_as_the_first_read(tmp_path):
    """The first run reads every file (one late record for tenant early in the last file) and
    dies before the engine wrote anything; the restart reads them again: the same record is
    late, the others are windowed, each tenant's windows equal its reference."""
    src, landing, out = tmp_path / "src", str(tmp_path / "landing"), str(tmp_path / "out")
    early = tenant_files(src, "early", T0, 3)
    later = tenant_files(src, "later", T0 + 600, 3)
    late_rec = write_ndjson(src / "z-late.ndjson", [line(record(agent="a0", t=T0 - 30, tenant="early"))])
    os.makedirs(landing)
    land_in_order([p for pair in zip(early, later) for p in pair] + [late_rec], landing)
    first = LandingDirectory(landing, SPEC, poll_interval_s=0.05, idle_timeout_s=0.3, out_dir=out)
    events = first.events()
    while first.stats.files < 7:  # every file read and recorded (then a crash: nothing written)
        next(events)
    assert first.stats.files == 7 and first.stats.dead == {"late": 1}
    s = job.run_landing(LandingDirectory(landing, SPEC, poll_interval_s=0.05, idle_timeout_s=0.3,
                                         out_dir=out), out)
    assert s.reconciles and dict(s.dead) == {"late": 1}
    assert s.ledger["file_reads"] == 13  # six read twice; the late one fed no window: retired at once
    expected = {("early", ms(T0 + 10 * i)): AGENTS * FILE_S for i in range(3)}
    expected |= {("later", ms(T0 + 600 + 10 * i)): AGENTS * FILE_S for i in range(3)}
    assert final_counts(out) == expected


def test_an_idle_tenant_closes_its_windows_after_the_idleness_timeout(tmp_path):
    """Tenant quiet (ten minutes ahead) sends one file and stops; tenant busy keeps landing
    files. Quiet's window fires once it has been idle for the timeout, long before the stream
    ends; busy's records are not late although quiet is far ahead."""
    src, landing, out = tmp_path / "src", tmp_path / "landing", str(tmp_path / "out")
    landing.mkdir()
    quiet = tenant_files(src, "quiet", T0 + 600, 1)
    busy = tenant_files(src, "busy", T0, 8)
    quiet_pane = os.path.join(out, "snapshots", "tenant=quiet", f"window={ms(T0 + 600)}-pane=0.parquet")
    seen: dict = {}

    def writer():
        land(quiet[0], str(landing))
        for p in busy:
            land(p, str(landing))
            time.sleep(0.25)
            if os.path.exists(quiet_pane) and "fired_after_busy_files" not in seen:
                seen["fired_after_busy_files"] = busy.index(p) + 1
        (landing / "_STOP").touch()

    source = LandingDirectory(str(landing), SPEC, poll_interval_s=0.05, tenant_idle_timeout_s=0.5)
    th = threading.Thread(target=writer)
    th.start()
    s = job.run_landing(source, out)
    th.join()
    assert s.reconciles and s.dead_total == 0
    assert seen.get("fired_after_busy_files", 99) < len(busy)  # while busy was still landing
    counts = final_counts(out)
    assert counts[("quiet", ms(T0 + 600))] == AGENTS * FILE_S
    assert sum(n for (t, _), n in counts.items() if t == "busy") == len(busy) * AGENTS * FILE_S


def test_a_ledger_from_before_per_tenant_time_is_upgraded_and_its_unsafe_files_are_a_clear_error(tmp_path):
    src, landing, out = tmp_path / "src", str(tmp_path / "landing"), str(tmp_path / "out")
    (path,) = tenant_files(src, "early", T0, 1)
    os.makedirs(landing)
    land(path, landing)
    os.makedirs(out)
    db = sqlite3.connect(os.path.join(out, "_ledger.sqlite"))
    db.executescript("""CREATE TABLE files (key TEXT PRIMARY KEY, name TEXT NOT NULL, seq INTEGER NOT NULL,
      bytes INTEGER NOT NULL, read INTEGER NOT NULL, emitted INTEGER NOT NULL, dead TEXT NOT NULL,
      wm_before REAL, wm_after REAL, max_seen REAL, retired INTEGER NOT NULL DEFAULT 0,
      reads INTEGER NOT NULL DEFAULT 1, run INTEGER NOT NULL);""")
    db.execute("INSERT INTO files VALUES (?, ?, 1, 1, 300, 300, '{}', NULL, ?, ?, 0, 1, 1)",
               (file_key(path), os.path.basename(path), T0 + 4.5, T0 + 9.5))
    db.commit()
    db.close()
    source = LandingDirectory(landing, SPEC, poll_interval_s=0.05, idle_timeout_s=0.3, out_dir=out)
    assert source.ledger.resume() == (T0 + 4.5, {})  # the old watermark counts for every tenant
    with pytest.raises(RuntimeError, match="one watermark for all tenants.*new output directory"):
        next(source.events())


def test_the_run_config_validates_and_passes_the_tenant_idleness_timeout():
    from pipelines.config import RunConfig

    assert RunConfig(input="x").validate().tenant_idle_timeout_s == 30.0
    with pytest.raises(ValueError, match="tenant_idle_timeout_s"):
        RunConfig(input="x", tenant_idle_timeout_s=0).validate()
    assert RunConfig(input="x", tenant_idle_timeout_s=None).validate().tenant_idle_timeout_s is None


# -- pipelines.tenant_time, unit and property tests ---------------------------------------------
def _rec(tenant: str, t: float, i: int = 0) -> dict:
    return {"tenant": tenant, "event_time": t, "i": i}


def test_a_window_fires_on_time_then_accumulating_late_panes_then_expires():
    tw = TenantWindows(WindowSpec(10.0, None, 30.0))
    assert tw.add([_rec("a", 2.0), _rec("a", 7.0)])[0] == []
    panes = tw.advance("a", 12.0)
    assert [(p.start, p.index, p.timing, len(p.records)) for p in panes] == [(0.0, 0, ON_TIME, 2)]
    assert not tw.is_late("a", 5.0)
    panes, handed = tw.add([_rec("a", 5.0)])
    assert [(p.index, p.timing, len(p.records)) for p in panes] == [(1, LATE_PANE, 3)]
    assert handed == {("a", 0): 1}
    assert tw.advance("a", 40.5) == [] and tw.is_late("a", 6.0)
    assert not tw.is_late("b", 6.0)  # another tenant's watermark is its own


def test_idle_tenants_close_and_the_end_of_stream_flushes():
    tw = TenantWindows(WindowSpec(10.0, 5.0, 30.0), idle_timeout_s=2.0)
    tw.add([_rec("a", 3.0)], now=100.0)
    tw.add([_rec("b", 3.0)], now=101.5)
    assert tw.idle(101.0) == []
    closed = tw.idle(102.5)  # a has been idle 2.5 s, b 1 s
    assert sorted((p.tenant, p.start) for p in closed) == [("a", -5.0), ("a", 0.0)]
    assert tw.is_late("a", 3.0) and not tw.is_late("a", 20.0)
    assert sorted((p.tenant, p.start) for p in tw.flush()) == [("b", -5.0), ("b", 0.0)]


def test_a_global_advance_moves_every_tenant_and_new_ones_start_there():
    tw = TenantWindows(WindowSpec(10.0, None, 0.0))
    tw.add([_rec("a", 1.0), _rec("b", 101.0)])
    assert [(p.tenant, p.start) for p in tw.advance_all(50.0)] == [("a", 0.0)]
    assert tw.watermarks() == {"a": 50.0, "b": 50.0} and tw.is_late("c", 1.0)


events_st = st.lists(st.tuples(st.sampled_from("xyz"), st.floats(0, 120).map(lambda t: round(t, 2)),
                               st.booleans()), max_size=60)


def _run(events, spec: WindowSpec, lag: float) -> tuple[list[Pane], Counter, int]:
    """Feed (tenant, event time, advance after?) one by one: (panes, late per tenant, accepted)."""
    tw, panes, late, accepted = TenantWindows(spec), [], Counter(), 0
    for i, (tenant, t, adv) in enumerate(events):
        if tw.is_late(tenant, t):
            late[tenant] += 1
            continue
        accepted += 1
        panes += tw.add([_rec(tenant, t, i)])[0]
        if adv:
            panes += tw.advance(tenant, tw.max_seen()[tenant] - lag)
    return panes + tw.flush(), late, accepted


specs_st = st.sampled_from([WindowSpec(10.0, None, 0.0), WindowSpec(10.0, None, 15.0),
                            WindowSpec(10.0, 5.0, 7.0)])


@settings(max_examples=150, deadline=None)
@given(events=events_st, spec=specs_st, lag=st.sampled_from([0.0, 3.0, 20.0]), seed=st.integers(0, 9))
def test_a_tenants_panes_do_not_depend_on_the_other_tenants(events, spec, lag, seed):
    """Per tenant, panes and lateness are those of the tenant's events alone, however the
    other tenants' events are interleaved with them."""
    rng = random.Random(seed)
    mine = [e for e in events if e[0] == "x"]
    others = iter(rng.sample([e for e in events if e[0] != "x"], len(events) - len(mine)))
    merged = []
    for e in mine:  # x's own order kept, the others' events anywhere in between
        merged += list(itertools.islice(others, rng.randint(0, 2))) + [e]
    merged += list(others)

    def of_x(panes):
        return [(p.start, p.index, p.timing, sorted(r["event_time"] for r in p.records))
                for p in panes if p.tenant == "x"]
    alone, late_alone, _ = _run(mine, spec, lag)
    mixed, late_mixed, _ = _run(merged, spec, lag)
    assert of_x(alone) == of_x(mixed) and late_alone["x"] == late_mixed["x"]


@settings(max_examples=150, deadline=None)
@given(events=events_st, spec=specs_st, lag=st.sampled_from([0.0, 3.0, 20.0]))
def test_every_accepted_record_is_in_the_panes_of_its_windows_and_counts_reconcile(events, spec, lag):
    panes, late, accepted = _run(events, spec, lag)
    assert accepted + sum(late.values()) == len(events)  # in = windowed + late
    last: dict = {}
    for p in panes:  # panes of a window: 0, 1, 2, ... each holding all records so far
        key = (p.tenant, p.start)
        prev = last.get(key)
        assert p.index == (0 if prev is None else prev.index + 1)
        assert p.timing == (ON_TIME if p.index == 0 else LATE_PANE)
        assert prev is None or {id(r) for r in prev.records} < {id(r) for r in p.records}
        assert all(r["tenant"] == p.tenant and p.start <= r["event_time"] < p.end for r in p.records)
        last[key] = p
    final = {(k, r["i"]) for k, p in last.items() for r in p.records}
    in_panes = {i for _, i in final}
    assert len(in_panes) == accepted  # every accepted record, no late one
    for i in in_panes:  # ... in the final pane of its last window (never expired before it)
        tenant, t, _ = events[i]
        assert ((tenant, spec.starts(t)[-1]), i) in final


def test_a_quiet_landing_directory_keeps_saying_it_is_alive(tmp_path):
    """Found with the service: with no file for 30 s, Beam's TestStream event service gave up
    (``queue.Empty`` after its 30 s wait) and the streaming job died. A quiet source sends a
    heartbeat every ``heartbeat_s``, well inside that wait, and Beam gets it as a watermark."""
    source = LandingDirectory(str(tmp_path), SPEC, poll_interval_s=0.02, heartbeat_s=0.1,
                              max_runtime_s=0.55)
    t0, beats = time.monotonic(), []
    for ev in source.events():
        assert isinstance(ev, Heartbeat)
        beats.append(time.monotonic() - t0)
    assert 4 <= len(beats) <= 6 and max(b - a for a, b in zip([0.0, *beats], beats)) < 0.2
    assert LandingDirectory.heartbeat_s < 30 / 2  # Beam's wait for the next event, with margin
    assert list(source_panes.steps([Heartbeat()])) == [("watermark", 0.0)]
