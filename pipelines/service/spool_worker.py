"""The spool worker: spooled OTLP requests -> per-second telemetry records in the landing dir.

One process beside the service (``python -m pipelines.service.spool_worker``), so that the
mapping's CPU does not compete with request handling. Each pass reads the spooled files in
order, feeds their spans to the ``SpanAggregator``, lands the sealed records as one NDJSON
file for the streaming job, writes the span dead letters, updates the ledger and deletes
every spooled file none of whose spans wait in an unsealed second. ``<spool>/_STOP`` (or
SIGTERM) drains the spool, seals everything and exits.

Exactly once, whatever kills it (issue 19). Every spooled span ends once in a landed record
or a dead letter, and ``ingest/ledger.json`` reconciles over the whole life of the data
directory (``spans_received = spans_in_records + spans_dead + spans_pending``, ``requests``
= files read, each counted once). A pass is committed by one atomic write of the ledger:

1. *Outbox.* The sealed records are written durably under a hidden name in the landing
   directory (``.pending-spans-<epoch>-<batch>.ndjson``; the job ignores dot-files) and the
   dead letters as ``<ingest>/deadletter/spans-<epoch>-<batch>.ndjson``. ``batch`` is the
   ledger's batch number + 1, ``epoch`` the data directory's (made with its first ledger).
2. *Commit.* The ledger is written: the cumulative counts, the batch number, the aggregator's
   seal state (per tenant: highest sealed second, latest span end, ...), the spool files read
   but kept (their spans wait in an unsealed second) in reading order, each with the
   positions of its spans that were dead-lettered, and the spool files released.
3. *Land.* The outbox file is renamed to ``spans-<epoch>-<batch>.ndjson``: the job sees it
   whole, once, only after it is counted (a rename happens or not; nothing is ever landed
   twice, and a record's content is fixed before the commit that counts it).
4. *Release.* The released spool files are deleted (and the spool directory synced).

A restart recovers before reading anything new: outbox files of committed batches are landed,
outbox files and dead-letter files of uncommitted batches (a pass the kill interrupted) are
deleted, spool files the ledger released are deleted. The aggregator takes the committed seal
state and the kept files are read again as a *replay*: their spans in sealed seconds (already
in landed records) and at dead-lettered positions are skipped, the pending ones are
aggregated again, and what the replay counts (its requests and spans) is taken off the base
the ledger adds to, so nothing is counted twice. The files the interrupted pass had read are
read again as new; nothing that pass wrote lands, so its redo may seal other records (more
requests may have arrived meanwhile) and still nothing lands twice. With the same spool the
redo reads the same passes and lands what an uninterrupted worker would have.

What a restart cannot restore: parent/child links to spans of seconds sealed before the
crash (the aggregator keeps their span ids in memory only). A client span's callee then
falls back to its peer attributes, and an in-process ``invoke_agent`` span whose parent is
in such a second counts as a request of its agent, in the records sealed after the restart;
no span is lost or counted twice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipelines import failpoints
from pipelines.service.durable import fsync_dir, write_durably
from pipelines.service.span_mapping import SpanAggregator, to_ndjson
from pipelines.service.spool import Spool, received_at, tenant_of
from pipelines.telemetry import DeadLetter

STOP = "_STOP"
LEDGER = "ledger.json"
PENDING = ".pending-"  # landing-directory prefix of records written but not yet committed


@dataclass
class Ledger:
    """What the worker did, cumulative over the life of the data directory, and what a restart
    needs to carry on exactly where the last commit left off."""

    requests: int = 0
    spans_received: int = 0
    spans_in_records: int = 0
    spans_dead: Counter = field(default_factory=Counter)
    records_landed: int = 0
    files_landed: int = 0
    epoch: str = ""  # names this data directory's landed files; made with the first ledger
    batch: int = 0  # last committed batch (its records and dead-letter files carry the number)
    seal: dict = field(default_factory=dict)  # SpanAggregator.seal_state() at the commit
    kept: list = field(default_factory=list)  # [[spool file, dead-lettered positions as ranges]]
    released: list = field(default_factory=list)  # spool files the commit released

    @property
    def spans_pending(self) -> int:
        return self.spans_received - self.spans_in_records - sum(self.spans_dead.values())

    def to_dict(self) -> dict:
        return {"requests": self.requests, "spans_received": self.spans_received,
                "spans_in_records": self.spans_in_records,
                "spans_dead": dict(sorted(self.spans_dead.items())),
                "spans_dead_total": sum(self.spans_dead.values()), "spans_pending": self.spans_pending,
                "records_landed": self.records_landed, "files_landed": self.files_landed}

    def dump(self) -> bytes:
        state = {"epoch": self.epoch, "batch": self.batch, "seal": self.seal, "kept": self.kept,
                 "released": self.released}
        return orjson.dumps({**self.to_dict(), "state": state}, option=orjson.OPT_INDENT_2)

    @classmethod
    def load(cls, path: str) -> Ledger:
        if not os.path.exists(path):
            return cls()
        with open(path, "rb") as fh:
            d = orjson.loads(fh.read())
        st = d.get("state", {})  # absent in ledgers written before the worker was crash-safe
        return cls(d["requests"], d["spans_received"], d["spans_in_records"], Counter(d["spans_dead"]),
                   d["records_landed"], d["files_landed"], st.get("epoch", ""), st.get("batch", 0),
                   st.get("seal", {}), st.get("kept", []), st.get("released", []))


def read_ledger(ingest_dir: str) -> dict:
    """The ledger as a dict (zeros before the worker's first pass)."""
    return Ledger.load(os.path.join(ingest_dir, LEDGER)).to_dict()


def _ranges(positions: set[int]) -> list[list[int]]:
    """Sorted positions as inclusive ``[first, last]`` runs."""
    out: list[list[int]] = []
    for p in sorted(positions):
        if out and p == out[-1][1] + 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return out


def _positions(ranges: list[list[int]]) -> set[int]:
    return {p for a, b in ranges for p in range(a, b + 1)}


class SpoolWorker:
    """One pass at a time (``step``), so tests can drive it without a process. Constructing it
    recovers what the last one left (see the module docstring)."""

    def __init__(self, spool: str, landing: str, ingest_dir: str, default_tenant: str = "default",
                 grace_s: float = 2.0, idle_flush_s: float = 5.0, max_files_per_pass: int = 256,
                 log=lambda m: print(m, file=sys.stderr)):
        self.spool, self.landing, self.ingest_dir = Spool(spool), landing, ingest_dir
        self.dead_dir = os.path.join(ingest_dir, "deadletter")
        for d in (landing, self.dead_dir):
            os.makedirs(d, exist_ok=True)
        self.agg = SpanAggregator(default_tenant=default_tenant, grace_s=grace_s)
        self.idle_flush_s, self.max_files, self.log = idle_flush_s, max_files_per_pass, log
        self._ledger_path = os.path.join(ingest_dir, LEDGER)
        self.ledger = Ledger.load(self._ledger_path)
        self._consumed: list[str] = []  # read, not yet released, in reading order
        self._dead_pos: dict[str, set[int]] = {}  # consumed file name -> dead-lettered positions
        self._seen: set[str] = set()
        self.replayed = 0  # spool files read again by the recovery
        self._recover()
        self._last_new = time.monotonic()

    # ---------------------------------------------------------------------------- recovery
    def _name(self, batch: int) -> str:
        return f"spans-{self.ledger.epoch}-{batch:010d}.ndjson"

    def _batch_of(self, name: str) -> int | None:
        """The batch number of one of this data directory's landed / dead-letter file names."""
        prefix = f"spans-{self.ledger.epoch}-"
        if not (name.startswith(prefix) and name.endswith(".ndjson")):
            return None
        num = name[len(prefix):-len(".ndjson")]
        return int(num) if num.isdigit() else None

    def _recover(self) -> None:
        led = self.ledger
        if not led.epoch:  # a new data directory (or a ledger from before crash safety)
            led.epoch = f"{time.time_ns():020d}"
            write_durably(self.ingest_dir, LEDGER, led.dump())
        for name in os.listdir(self.landing):
            path = os.path.join(self.landing, name)
            if name.startswith("." + PENDING) and name.endswith(".tmp"):
                os.unlink(path)  # an outbox write the kill interrupted
            elif name.startswith(PENDING):
                final = name[len(PENDING):]
                batch = self._batch_of(final)
                if batch is not None and batch <= led.batch:
                    os.replace(path, os.path.join(self.landing, final))  # committed: land it
                    self.log(f"spool worker: landed committed {final} after a restart")
                else:
                    os.unlink(path)  # not committed: its pass runs again
        fsync_dir(self.landing)
        for name in os.listdir(self.dead_dir):
            batch = self._batch_of(name)
            uncommitted = batch is not None and batch > led.batch
            if uncommitted or (name.startswith(".spans-") and name.endswith(".tmp")):
                os.unlink(os.path.join(self.dead_dir, name))
        fsync_dir(self.dead_dir)
        for name in led.released:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.spool.path, name))
        fsync_dir(self.spool.path)
        failpoints.hit("spool.recovered")

        self.agg.restore_seal_state(led.seal)
        for name, dead in led.kept:
            path = os.path.join(self.spool.path, name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                self.log(f"spool worker: kept spool file {name} is gone; its pending spans are lost")
                continue
            req = ExportTraceServiceRequest()
            req.ParseFromString(data)
            dead_pos = _positions(dead)
            self.agg.add(req, source=name, tenant=tenant_of(path), received_s=received_at(path),
                         replay=dead_pos)
            self._seen.add(path)
            self._consumed.append(path)
            self._dead_pos[name] = dead_pos
            self.replayed += 1
        # the replay counted again what the ledger has counted: take it off the base
        c = self.agg.counts
        if c["spans_received"] != led.spans_pending:
            self.log(f"spool worker: replay found {c['spans_received']} pending spans, the ledger "
                     f"says {led.spans_pending}")
        self._base = {"requests": led.requests - c["requests"],
                      "spans_received": led.spans_received - c["spans_received"],
                      "spans_in_records": led.spans_in_records, "spans_dead": Counter(led.spans_dead),
                      "records_landed": led.records_landed, "files_landed": led.files_landed}
        self._files_landed = 0

    # -------------------------------------------------------------------------------- pass
    def step(self, flush: bool = False) -> int:
        """Read what is spooled, seal what is due, land it; the number of files read."""
        files = [p for p in self.spool.pending() if p not in self._seen][:self.max_files]
        for path in files:
            with open(path, "rb") as fh:
                data = fh.read()
            req = ExportTraceServiceRequest()
            req.ParseFromString(data)  # the service decoded it before spooling: it parses
            name = os.path.basename(path)
            self.agg.add(req, source=name, tenant=tenant_of(path), received_s=received_at(path))
            self._seen.add(path)
            self._consumed.append(path)
            self._dead_pos[name] = set()
        now = time.monotonic()
        if files:
            self._last_new = now
        elif now - self._last_new >= self.idle_flush_s:
            flush = True
        result = self.agg.flush() if flush else self.agg.seal()
        for d in result.dead:
            if d.source in self._dead_pos:
                self._dead_pos[d.source].add(d.position)
        waiting = self.agg.pending_sources()
        kept = [p for p in self._consumed if os.path.basename(p) in waiting]
        released = [p for p in self._consumed if os.path.basename(p) not in waiting]
        if (files or result.records or result.dead or released
                or (flush and self.agg.seal_state() != self.ledger.seal)):  # (a flush sealing no record)
            self._commit(result.records, result.dead, kept, released)
        return len(files)

    def _commit(self, records: list[dict], dead: list[DeadLetter], kept: list[str],
                released: list[str]) -> None:
        led = self.ledger
        batch = led.batch + 1 if records or dead else led.batch
        final = self._name(batch)
        if records:  # 1. outbox
            write_durably(self.landing, PENDING + final, to_ndjson(records))
            self._files_landed += 1
        if dead:
            write_durably(self.dead_dir, final, b"".join(orjson.dumps(d.to_dict()) + b"\n" for d in dead))
        failpoints.hit("spool.outbox_written")

        c, b = self.agg.counts, self._base  # 2. commit
        led.requests = b["requests"] + c["requests"]
        led.spans_received = b["spans_received"] + c["spans_received"]
        led.spans_in_records = b["spans_in_records"] + c["spans_in_records"]
        led.spans_dead = b["spans_dead"] + Counter(c["spans_dead"])
        led.records_landed = b["records_landed"] + c["records_produced"]
        led.files_landed = b["files_landed"] + self._files_landed
        led.batch, led.seal = batch, self.agg.seal_state()
        led.kept = [[os.path.basename(p), _ranges(self._dead_pos[os.path.basename(p)])] for p in kept]
        led.released = [os.path.basename(p) for p in released]
        write_durably(self.ingest_dir, LEDGER, led.dump())
        failpoints.hit("spool.ledger_written")

        if records:  # 3. land
            os.replace(os.path.join(self.landing, PENDING + final), os.path.join(self.landing, final))
            fsync_dir(self.landing)
            failpoints.hit("spool.landed")

        for path in released:  # 4. release
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            failpoints.hit("spool.released")
            self._seen.discard(path)
            self._dead_pos.pop(os.path.basename(path), None)
        if released:
            fsync_dir(self.spool.path)  # before the next commit forgets them
        self._consumed = kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spool", required=True)
    p.add_argument("--landing", required=True)
    p.add_argument("--ingest-dir", required=True)
    p.add_argument("--default-tenant", default="default")
    p.add_argument("--grace", type=float, default=2.0)
    p.add_argument("--idle-flush", type=float, default=5.0)
    p.add_argument("--poll", type=float, default=0.05)
    p.add_argument("--max-files-per-pass", type=int, default=256)
    a = p.parse_args(argv)
    worker = SpoolWorker(a.spool, a.landing, a.ingest_dir, a.default_tenant, a.grace, a.idle_flush,
                         a.max_files_per_pass)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    stop_file = os.path.join(a.spool, STOP)
    while True:
        if stopping or os.path.exists(stop_file):
            while worker.step():  # drain what is spooled, then seal everything
                pass
            worker.step(flush=True)
            return 0
        if not worker.step():
            time.sleep(a.poll)


if __name__ == "__main__":
    sys.exit(main())
