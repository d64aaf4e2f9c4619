"""The spool worker: spooled OTLP requests -> per-second telemetry records in the landing dir.

One process beside the service (``python -m pipelines.service.spool_worker``), so that the
mapping's CPU does not compete with request handling. Each pass reads the spooled files in
order, feeds their spans to the ``SpanAggregator``, lands the sealed records as one NDJSON
file (durably, atomically) for the streaming job, appends span dead letters, updates the
ledger and deletes every spooled file none of whose spans wait in an unsealed second.
``<spool>/_STOP`` (or SIGTERM) drains the spool, seals everything and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipelines.service.durable import fsync_dir, unique_stem, write_durably
from pipelines.service.span_mapping import SpanAggregator
from pipelines.service.spool import Spool, received_at, tenant_of
from pipelines.telemetry import DeadLetter

STOP = "_STOP"
LEDGER = "ledger.json"


@dataclass
class Ledger:
    """What the worker did, cumulative over the life of the data directory."""

    requests: int = 0
    spans_received: int = 0
    spans_in_records: int = 0
    spans_dead: Counter = field(default_factory=Counter)
    records_landed: int = 0
    files_landed: int = 0

    @property
    def spans_pending(self) -> int:
        return self.spans_received - self.spans_in_records - sum(self.spans_dead.values())

    def to_dict(self) -> dict:
        return {"requests": self.requests, "spans_received": self.spans_received,
                "spans_in_records": self.spans_in_records,
                "spans_dead": dict(sorted(self.spans_dead.items())),
                "spans_dead_total": sum(self.spans_dead.values()), "spans_pending": self.spans_pending,
                "records_landed": self.records_landed, "files_landed": self.files_landed}

    @classmethod
    def load(cls, path: str) -> Ledger:
        if not os.path.exists(path):
            return cls()
        with open(path, "rb") as fh:
            d = orjson.loads(fh.read())
        return cls(d["requests"], d["spans_received"], d["spans_in_records"], Counter(d["spans_dead"]),
                   d["records_landed"], d["files_landed"])


def read_ledger(ingest_dir: str) -> dict:
    """The ledger as a dict (zeros before the worker's first pass)."""
    return Ledger.load(os.path.join(ingest_dir, LEDGER)).to_dict()


class SpoolWorker:
    """One pass at a time (``step``), so tests can drive it without a process."""

    def __init__(self, spool: str, landing: str, ingest_dir: str, default_tenant: str = "default",
                 grace_s: float = 2.0, idle_flush_s: float = 5.0, max_files_per_pass: int = 256):
        self.spool, self.landing, self.ingest_dir = Spool(spool), landing, ingest_dir
        self.dead_dir = os.path.join(ingest_dir, "deadletter")
        for d in (landing, self.dead_dir):
            os.makedirs(d, exist_ok=True)
        self.agg = SpanAggregator(default_tenant=default_tenant, grace_s=grace_s)
        self.idle_flush_s, self.max_files = idle_flush_s, max_files_per_pass
        self.ledger = Ledger.load(os.path.join(ingest_dir, LEDGER))
        self._base = self.ledger.to_dict()
        self._consumed: list[str] = []  # read, not yet deletable
        self._seen: set[str] = set()
        self._last_new = time.monotonic()

    def step(self, flush: bool = False) -> int:
        """Read what is spooled, seal what is due, land it; the number of files read."""
        files = [p for p in self.spool.pending() if p not in self._seen][:self.max_files]
        for path in files:
            with open(path, "rb") as fh:
                data = fh.read()
            req = ExportTraceServiceRequest()
            req.ParseFromString(data)  # the service decoded it before spooling: it parses
            self.agg.add(req, source=os.path.basename(path), tenant=tenant_of(path),
                         received_s=received_at(path))
            self._seen.add(path)
            self._consumed.append(path)
        now = time.monotonic()
        if files:
            self._last_new = now
        elif now - self._last_new >= self.idle_flush_s:
            flush = True
        result = self.agg.flush() if flush else self.agg.seal()
        self._land(result.records, result.dead)
        self._release()
        return len(files)

    def _land(self, records: list[dict], dead: list[DeadLetter]) -> None:
        if records:
            body = b"".join(orjson.dumps(r) + b"\n" for r in records)
            write_durably(self.landing, unique_stem("spans") + ".ndjson", body)
            self.ledger.files_landed += 1
        if dead:
            path = os.path.join(self.dead_dir, unique_stem("spans") + ".ndjson")
            with open(path, "wb") as fh:
                fh.write(b"".join(orjson.dumps(d.to_dict()) + b"\n" for d in dead))
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(self.dead_dir)
        c = self.agg.counts
        self.ledger.requests = self._base["requests"] + c["requests"]
        self.ledger.spans_received = self._base["spans_received"] + c["spans_received"]
        self.ledger.spans_in_records = self._base["spans_in_records"] + c["spans_in_records"]
        self.ledger.spans_dead = Counter(self._base["spans_dead"]) + Counter(c["spans_dead"])
        self.ledger.records_landed = self._base["records_landed"] + c["records_produced"]
        write_durably(self.ingest_dir, LEDGER, json.dumps(self.ledger.to_dict(), indent=1).encode())

    def _release(self) -> None:
        """Delete spooled files none of whose spans still wait in an unsealed second."""
        waiting = self.agg.pending_sources()
        keep = []
        for path in self._consumed:
            if os.path.basename(path) in waiting:
                keep.append(path)
            else:
                os.unlink(path)
                self._seen.discard(path)
        self._consumed = keep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spool", required=True)
    p.add_argument("--landing", required=True)
    p.add_argument("--ingest-dir", required=True)
    p.add_argument("--default-tenant", default="default")
    p.add_argument("--grace", type=float, default=2.0)
    p.add_argument("--idle-flush", type=float, default=5.0)
    p.add_argument("--poll", type=float, default=0.05)
    a = p.parse_args(argv)
    worker = SpoolWorker(a.spool, a.landing, a.ingest_dir, a.default_tenant, a.grace, a.idle_flush)
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
