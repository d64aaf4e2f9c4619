"""The spool worker killed anywhere, any number of times (issue 19: nothing lost, whatever dies).

A spool of real OTLP requests (SDK-made, two tenants, 0.5 s apart in event time) with late
requests, partly late ones, an exact retry of an earlier request, and requests mixing
duplicate spans and spans of an invalid tenant with good ones. An uninterrupted drain is the
reference. Then the worker is killed at each failpoint of a pass (outbox written, ledger
written, landed, a spool file released) and of the restart (recovered), restarted and
drained: the landed records (keyed by tenant, agent, second), the span dead letters and the
ledger equal the reference's exactly, every record and dead letter exists once, and the
ledger reconciles with the spans spooled. A "job" reads the landing directory at every
failpoint and pass, counting each file once per name and content as the streaming job does,
so a file landed and then replaced would be seen. In-process (a failpoint raises instead of
killing) every kill point of a run is tried (of the spool-file releases every 4th), kills
while restarting too, and restarts that read in other passes than the killed run; as a real
process (``python -m
pipelines.service.spool_worker`` under ``AURA_FAILPOINTS``, SIGKILL) a few, one at a random
count, and three kills in a row (the second while recovering).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipelines import failpoints
from pipelines.service.spool import Spool
from pipelines.service.spool_worker import STOP, SpoolWorker, read_ledger
from pipelines.source_ledger import file_key
from pipelines.telemetry import parse_lines
from tests.otlp_payloads import Fleet, fleet_request, shifted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_FILES, SPANS, PER_PASS, GRACE = 48, 96, 4, 1.0
POINTS = ("spool.outbox_written", "spool.ledger_written", "spool.landed", "spool.released")


def _n_spans(body: bytes) -> int:
    req = ExportTraceServiceRequest.FromString(body)
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


@pytest.fixture(scope="module")
def spool_template(tmp_path_factory) -> tuple[str, int]:
    """(directory of spooled requests, number of spans in them)."""
    d = str(tmp_path_factory.mktemp("spool-template"))
    s = Spool(d)
    t0 = math.floor(time.time()) + 30  # now-ish: received times (file names) do not seal by idleness
    templates = [fleet_request(SPANS, t0, seed=seed) for seed in range(3)]
    bad = fleet_request(16, t0, seed=9, fleet=Fleet(extra_resource={"aura.tenant": "not a tenant!"}))
    spans, body = 0, b""
    for k in range(N_FILES):
        dt = 0.5 * k
        if k in (9, 30):
            dt -= 6.0  # late: its seconds are sealed
        elif k in (14, 37):
            dt -= 3.5  # partly late
        if k in (20, 40):
            s.put(body, "acme" if k % 2 else "beta")  # an exact retry of the request before
            spans += _n_spans(body)
            continue
        body = shifted(templates[k % 3], dt, k + 1)
        if k in (25, 33, 43):  # duplicate spans and spans of an invalid tenant beside good ones
            req = ExportTraceServiceRequest.FromString(body)
            req.resource_spans.extend(list(req.resource_spans)[:2])
            req.resource_spans.extend(ExportTraceServiceRequest.FromString(shifted(bad, dt, 1000 + k))
                                      .resource_spans)
            body = req.SerializeToString()
        s.put(body, "acme" if k % 2 else "beta")
        spans += _n_spans(body)
    return d, spans


@dataclass
class Dirs:
    spool: str
    landing: str
    ingest: str
    job: dict = field(default_factory=dict)  # what a job reading the landing dir counted: key -> lines

    def look(self) -> None:
        """Read the landing directory as the streaming job does, at any moment: each file once
        per name and content (``source_ledger.file_key``: same name, other bytes = other file)."""
        for name in os.listdir(self.landing):
            if name.startswith((".", "_")) or not name.endswith(".ndjson"):
                continue
            path = os.path.join(self.landing, name)
            key = file_key(path)
            if key not in self.job:
                self.job[key] = _lines(path)


def _dirs(root, template: str) -> Dirs:
    d = Dirs(*(os.path.join(str(root), d) for d in ("spool", "landing", "ingest")))
    shutil.copytree(template, d.spool)
    open(os.path.join(d.spool, STOP), "w").close()  # every run drains and exits
    return d


def _worker(d: Dirs, max_files: int = PER_PASS) -> SpoolWorker:
    w = SpoolWorker(d.spool, d.landing, d.ingest, grace_s=GRACE, idle_flush_s=600.0,
                    max_files_per_pass=max_files, log=lambda m: None)
    d.look()
    return w


def _drain(d: Dirs, max_files: int = PER_PASS) -> None:
    """A worker's life: recover, then what ``main`` does on ``_STOP``; the job looks after each pass."""
    w = _worker(d, max_files)
    while w.step():
        d.look()
    w.step(flush=True)
    d.look()


def _outcome(d: Dirs) -> dict:
    """Records the job counted, dead letters and ledger of a finished data directory; every
    record and every dead letter exists once."""
    d.look()
    assert [n for n in os.listdir(d.landing) if n.startswith(".")] == []
    records: dict[tuple, dict] = {}
    for key, lines in sorted(d.job.items()):
        res = parse_lines(lines, key)
        assert res.dead == []
        for raw, rec in zip(lines, res.records, strict=True):
            k = (rec["tenant"], rec["agent_id"], rec["ts"])
            assert k not in records, f"{k} landed twice" + (" with other content" if records[k] !=
                                                              orjson.loads(raw) else "")
            records[k] = orjson.loads(raw)
    dead: dict[tuple, str] = {}
    dead_dir = os.path.join(d.ingest, "deadletter")
    for name in sorted(os.listdir(dead_dir)):
        assert not name.startswith("."), f"left in the dead-letter directory: {name}"
        for raw in _lines(os.path.join(dead_dir, name)):
            x = orjson.loads(raw)
            k = (x["source"], x["position"])
            assert k not in dead, f"span {k} dead-lettered twice"
            dead[k] = x["reason"]
    assert [n for n in os.listdir(d.spool) if n != STOP] == []
    return {"records": records, "dead": dead, "ledger": read_ledger(d.ingest)}


def _lines(path: str) -> list[bytes]:
    with open(path, "rb") as fh:
        return fh.read().splitlines()


class _Killed(BaseException):
    """A failpoint's kill, in-process: nothing after it runs."""


def _arm(monkeypatch, name: str | None, count: int, d: Dirs | None = None) -> Counter:
    """Make ``failpoints.hit(name)`` raise at its ``count``-th hit, count every hit, and let the
    job look at the landing directory at each."""
    hits: Counter = Counter()

    def hit(point: str) -> None:
        hits[point] += 1
        if d is not None:
            d.look()
        if point == name and hits[point] == count:
            raise _Killed(point)

    monkeypatch.setattr(failpoints, "hit", hit)
    return hits


@pytest.fixture(scope="module")
def reference(spool_template, tmp_path_factory) -> dict:
    """The uninterrupted drain, and how often it passes each failpoint."""
    template, n_spans = spool_template
    dirs = _dirs(tmp_path_factory.mktemp("reference"), template)
    with pytest.MonkeyPatch.context() as mp:
        hits = _arm(mp, None, 0, dirs)
        _drain(dirs)
    out = _outcome(dirs)
    led = out["ledger"]
    assert led["spans_received"] == n_spans == led["spans_in_records"] + led["spans_dead_total"]
    assert led["spans_pending"] == 0 and led["requests"] == N_FILES
    assert led["records_landed"] == len(out["records"]) > 0
    assert {"late_span", "duplicate_span", "invalid_tenant"} <= set(led["spans_dead"])
    assert Counter(out["dead"].values()) == led["spans_dead"]
    assert all(hits[p] >= 8 for p in POINTS), hits
    return {**out, "hits": hits, "n_spans": n_spans}


def _reconciles(out: dict, n_spans: int, what: str) -> None:
    led = out["ledger"]
    assert led["spans_received"] == n_spans == led["spans_in_records"] + led["spans_dead_total"], what
    assert led["spans_pending"] == 0 and led["requests"] == N_FILES, what
    assert led["records_landed"] == len(out["records"]), what
    assert Counter(out["dead"].values()) == led["spans_dead"], what


def _check(out: dict, reference: dict, what: str) -> None:
    _reconciles(out, reference["n_spans"], what)
    assert out["ledger"] == reference["ledger"], what
    assert out["dead"] == reference["dead"], what
    missing = reference["records"].keys() - out["records"].keys()
    extra = out["records"].keys() - reference["records"].keys()
    assert not missing and not extra, f"{what}: {len(missing)} records missing, {len(extra)} extra"
    differ = [k for k, r in reference["records"].items() if out["records"][k] != r]
    assert not differ, f"{what}: {len(differ)} records differ, e.g. {differ[0]}"


# ----------------------------------------------------------------------------- in-process
def test_killed_at_every_point_of_a_run_then_restarted(spool_template, reference, tmp_path, monkeypatch):
    template = spool_template[0]
    kills = [(p, n) for p in POINTS for n in range(1, reference["hits"][p] + 1)
             if p != "spool.released" or n % 4 == 1]  # releases: every 4th of ~48
    pending_at_kill = 0
    for i, (point, count) in enumerate(kills):
        dirs = _dirs(tmp_path / str(i), template)
        _arm(monkeypatch, point, count, dirs)
        with pytest.raises(_Killed):
            _drain(dirs)
        pending_at_kill += read_ledger(dirs.ingest)["spans_pending"] > 0
        _arm(monkeypatch, None, 0, dirs)
        _drain(dirs)
        _check(_outcome(dirs), reference, f"killed at {point}={count}")
        shutil.rmtree(tmp_path / str(i))
    assert pending_at_kill > len(kills) // 2  # most kills left spans waiting in unsealed seconds


def test_killed_again_while_restarting(spool_template, reference, tmp_path, monkeypatch):
    chains = [[("spool.ledger_written", 5), ("spool.recovered", 1)],
              [("spool.landed", 3), ("spool.outbox_written", 1), ("spool.released", 2)],
              [("spool.outbox_written", 6), ("spool.ledger_written", 1), ("spool.landed", 2),
               ("spool.released", 9)]]
    for i, chain in enumerate(chains):
        dirs = _dirs(tmp_path / str(i), spool_template[0])
        for point, count in chain:
            _arm(monkeypatch, point, count, dirs)
            with pytest.raises(_Killed):
                _drain(dirs)
        _arm(monkeypatch, None, 0, dirs)
        _drain(dirs)
        _check(_outcome(dirs), reference, f"killed at {chain}")


def test_a_restart_that_reads_in_other_passes_still_lands_everything_once(spool_template, tmp_path,
                                                                          monkeypatch):
    """Restarted with other passes (as when more requests arrived meanwhile), a pass redone
    seals other records than the one the kill interrupted: what that one wrote must never land."""
    template, n_spans = spool_template
    for i, (point, count) in enumerate([("spool.outbox_written", 3), ("spool.outbox_written", 7),
                                        ("spool.ledger_written", 4), ("spool.landed", 5)]):
        dirs = _dirs(tmp_path / str(i), template)
        _arm(monkeypatch, point, count, dirs)
        with pytest.raises(_Killed):
            _drain(dirs)
        _arm(monkeypatch, None, 0, dirs)
        _drain(dirs, max_files=64)
        _reconciles(_outcome(dirs), n_spans, f"killed at {point}={count}")


# ------------------------------------------------------------------------- real processes
def _run(d: Dirs, kill: str | None, log: str) -> int:
    cmd = [sys.executable, "-m", "pipelines.service.spool_worker", "--spool", d.spool, "--landing",
           d.landing, "--ingest-dir", d.ingest, "--grace", str(GRACE), "--idle-flush", "600",
           "--max-files-per-pass", str(PER_PASS)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop(failpoints.ENV, None)
    if kill:
        env[failpoints.ENV] = kill
    with open(log, "ab") as fh:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=120).returncode


def _tail(log: str) -> str:
    with open(log, errors="replace") as fh:
        return fh.read()[-2000:]


def test_sigkilled_worker_process_restarts_exactly_once(spool_template, reference, tmp_path):
    seed = int(os.environ.get("AURA_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    point = rng.choice(POINTS)
    runs = [[("spool.outbox_written", 3)], [("spool.ledger_written", 5)], [("spool.landed", 4)],
            [("spool.released", 7)],
            [(point, rng.randint(1, reference["hits"][point]))],  # once at a random count
            [("spool.landed", 6), ("spool.recovered", 1), ("spool.released", 3)]]  # in a row
    for i, kills in enumerate(runs):
        dirs = _dirs(tmp_path / str(i), spool_template[0])
        log = str(tmp_path / f"{i}.log")
        what = f"killed at {kills} (AURA_CRASH_SEED={seed})"
        for point, count in kills:
            rc = _run(dirs, f"{point}={count}", log)
            assert rc == -signal.SIGKILL, f"{what}: exit {rc}\n{_tail(log)}"
            dirs.look()  # the job reads what the killed worker left
            led = read_ledger(dirs.ingest)
            assert led["spans_received"] == (led["spans_in_records"] + led["spans_dead_total"]
                                             + led["spans_pending"])
        assert _run(dirs, None, log) == 0, _tail(log)
        _check(_outcome(dirs), reference, what)
