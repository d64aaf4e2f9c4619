"""The streaming source: telemetry files -> window panes and dead letters.

Engine-agnostic. It turns batches of input (files dropped into a landing directory, or a
test's script) into a sequence of events: ``Panes`` and ``DeadLetters``. It owns event
time, one watermark per tenant (``pipelines.tenant_time``: largest event time of the tenant
minus the out-of-orderness), so it decides both when a window fires (the engine only turns
each pane into its snapshot) and lateness: a record whose every window has expired for its
tenant (tenant watermark > window end + allowed lateness) becomes a dead letter with reason
``late`` here. One tenant far ahead in event time makes no other tenant's records late.

With a ledger (``pipelines.source_ledger``) the landing directory is crash-safe: a file
stays in the landing directory until every window it feeds is final on disk; a restarted
source first reads again, in their first order and with their first watermarks, the files
not yet retired (with the tenants' watermarks they first had), then goes on with new ones.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from pipelines import failpoints, observe, tracing
from pipelines.inputs import INPUT_SUFFIXES
from pipelines.source_ledger import FileRead, SourceLedger, file_key
from pipelines.telemetry import LATE, DeadLetter, ParseResult, TimestampGuard, parse_file, parse_lines
from pipelines.tenant_time import Pane, TenantWindows
from pipelines.windowing import WindowSpec, ms


@dataclass(frozen=True)
class Panes:
    """Window panes fired by the tenants' watermarks, in firing order."""

    items: list[Pane]

    @property
    def n_records(self) -> int:
        return sum(len(p.records) for p in self.items)


@dataclass(frozen=True)
class DeadLetters:
    items: list[DeadLetter]


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new, the source is alive. A live engine may give up on a source that is
    silent too long: Beam's TestStream event service waits 30 s for the next event, then
    ends the stream with an error."""


Event = Panes | DeadLetters | Heartbeat


@dataclass
class SourceStats:
    """Counts that must reconcile: read == emitted + dead."""

    files: int = 0
    read: int = 0
    emitted: int = 0
    dead: Counter = field(default_factory=Counter)

    @property
    def dead_total(self) -> int:
        return sum(self.dead.values())


class EventBuilder:
    """Parses batches, applies the timestamp guard and the per-tenant lateness gate, fires
    the panes of each tenant's windows (``TenantWindows``), tracks counts."""

    def __init__(self, spec: WindowSpec, guard: TimestampGuard | None = None,
                 tenant_idle_timeout_s: float | None = None):
        self.spec = spec
        self.guard = guard or TimestampGuard()
        self.clock = TenantWindows(spec, tenant_idle_timeout_s)
        self.stats = SourceStats()
        self.final: set[tuple[str, int]] = set()  # (tenant, window ms) already final on disk
        self.handed: Counter = Counter()  # (tenant, window ms) -> records, of the last batch

    def _closed(self, rec: dict, again: bool) -> bool:
        """Every window of the record fired its final pane (by its tenant's watermark, or in an
        earlier run; a file read ``again`` went to those windows the first time, so only the
        watermark counts)."""
        tenant, t = rec["tenant"], rec["event_time"]
        if self.clock.is_late(tenant, t):
            return True
        return not again and bool(self.final) and all((tenant, ms(s)) in self.final
                                                      for s in self.spec.starts(t))

    def from_result(self, res: ParseResult, source: str, again: bool = False) -> list[Event]:
        """Events for one parsed batch from ``source`` (no watermark change); ``again``: read
        again after a restart."""
        self.stats.read += res.n_read
        dead = list(res.dead)
        ok: list[dict] = []
        for rec, (raw, pos) in zip(res.records, res.origins):
            if self._closed(rec, again):
                wm = self.clock.watermark(rec["tenant"])
                dead.append(DeadLetter(LATE, f"event time {rec['event_time']:.3f}: its windows closed "
                                       f"before tenant {rec['tenant']!r}'s watermark "
                                       f"{wm if wm is not None else float('-inf'):.3f}", source, pos, raw))
            else:
                ok.append(rec)
        self.stats.emitted += len(ok)
        self.stats.dead.update(d.reason for d in dead)
        observe.records(ok, dead)
        panes, self.handed = self.clock.add(ok, time.monotonic())
        events = self._panes(panes)
        if dead:
            events.append(DeadLetters(dead))
        return events

    def lines(self, lines: Iterable[bytes], source: str) -> list[Event]:
        t0 = time.time_ns()
        return self._traced(self.from_result(parse_lines(lines, source, self.guard), source), source, t0)

    def file(self, path: str, again: bool = False) -> list[Event]:
        self.stats.files += 1
        t0 = time.time_ns()
        return self._traced(self.from_result(parse_file(path, self.guard), path, again), path, t0)

    def _traced(self, events: list[Event], source: str, t0: int) -> list[Event]:
        trace_parse(self.handed, source, t0)
        return events

    def file_then_advance(self, path: str, lag_s: float) -> list[Event]:
        """Events of one file, then each tenant's watermark moved to (its largest event time
        - lag)."""
        return self.file(path) + self.advance_by_lag(lag_s)

    def advance_by_lag(self, lag_s: float, at_least: dict[str, float] | None = None) -> list[Event]:
        """Each tenant's watermark to its largest event time - ``lag_s`` (or ``at_least``)."""
        panes: list[Pane] = []
        for tenant, top in self.clock.max_seen().items():
            panes += self.clock.advance(tenant, max(top - lag_s, (at_least or {}).get(tenant, -math.inf)))
        return self._panes(panes)

    def restore(self, watermarks: dict[str, float]) -> list[Event]:
        """Tenants' watermarks forward to at least these (a file read again after a restart)."""
        return self._panes([p for tenant, t in sorted(watermarks.items())
                            for p in self.clock.advance(tenant, t)])

    def advance(self, t: float) -> list[Event]:
        """Every tenant's watermark forward to at least ``t`` (never backwards)."""
        return self._panes(self.clock.advance_all(t))

    def idle(self, now: float) -> list[Event]:
        """Close the windows of tenants idle for the timeout (wall clock ``now``, monotonic)."""
        return self._panes(self.clock.idle(now))

    def flush(self) -> list[Event]:
        """End of stream: every open window fires."""
        return self._panes(self.clock.flush())

    def _panes(self, panes: list[Pane]) -> list[Event]:
        wms, tops = self.clock.watermarks(), self.clock.max_seen()
        finite = [w for w in wms.values() if math.isfinite(w)]
        self.guard.watermark = max(finite) if finite else None  # absurd timestamps: stream-wide
        lags = [(tops[k] - w, k) for k, w in wms.items() if k in tops and math.isfinite(w)]
        if lags:
            k = max(lags)[1]
            observe.watermark(tops[k], wms[k])  # the tenant furthest behind its newest record
        return [Panes(panes)] if panes else []


def trace_parse(windows: Counter, source: str, t0: int) -> None:
    """A ``parse`` span (from ``t0`` to now) in the trace of every window the parsed batch
    feeds, ``windows``: (tenant, window ms) -> records (tracing on only)."""
    if tracing.enabled():
        end, name = time.time_ns(), os.path.basename(source)
        for (tenant, window_ms), n in windows.items():
            tracing.record_span("parse", tenant, window_ms, t0, end, source=name, records=n)


def scripted_events(script: Iterable[tuple], spec: WindowSpec,
                    guard: TimestampGuard | None = None) -> tuple[list[Event], SourceStats]:
    """Events for a test script of ``("lines", source, [bytes, ...])`` and
    ``("watermark", t)`` steps (every tenant's watermark), then the end of the stream."""
    b = EventBuilder(spec, guard)
    events: list[Event] = []
    for step in script:
        if step[0] == "lines":
            events += b.lines(step[2], step[1])
        elif step[0] == "watermark":
            events += b.advance(float(step[1]))
        else:
            raise ValueError(f"unknown script step {step[0]!r}")
    return events + b.flush(), b.stats


def window_counts(records: list[dict], spec: WindowSpec) -> Counter:
    """(tenant, window ms) -> records of ``records`` in that window (all of their windows)."""
    return Counter((r["tenant"], ms(s)) for r in records for s in spec.starts(r["event_time"]))


@dataclass
class LandingDirectory:
    """Polls a directory for new telemetry files and turns each into events.

    Writers drop complete files (write ``name.tmp``, then rename); files whose names start
    with ``.`` or ``_`` or end in ``.tmp`` are ignored. Each tenant's watermark trails its
    largest event time by ``max_out_of_orderness_s``; a tenant without records for
    ``tenant_idle_timeout_s`` (wall clock) has its open windows closed. The stream ends (every
    open window fires) when ``stop_file`` appears, after ``idle_timeout_s`` without new files,
    or after ``max_runtime_s``.

    Without ``out_dir`` a file moves into ``archive`` once its events are out (a crash then
    loses the windows that were still open). With ``out_dir`` the source keeps its ledger
    there, writes its dead letters there itself (one file per landed file, so a re-read
    overwrites), and a file moves into ``archive`` only when every window it feeds is final
    on disk, with each kind of output in ``outputs`` written for its last pane.
    """

    path: str
    spec: WindowSpec
    archive: str | None = None
    max_out_of_orderness_s: float = 5.0
    tenant_idle_timeout_s: float | None = 30.0
    poll_interval_s: float = 0.2
    idle_timeout_s: float | None = None
    max_runtime_s: float | None = None
    stop_file: str = "_STOP"
    settle_s: float = 5.0  # with a ledger: how often to retire files while no new ones land
    heartbeat_s: float = 5.0  # a Heartbeat after this long without an event (< the engine's 30 s)
    guard: TimestampGuard = field(default_factory=TimestampGuard)
    on_file: Callable[[str, SourceStats], None] | None = None
    on_start: Callable[[], None] | None = None  # called once the engine asks for the first events
    out_dir: str | None = None  # crash-safe: the ledger and the source's dead letters live here
    outputs: tuple[str, ...] = ()  # kinds of pane output besides snapshots a final window needs

    def __post_init__(self):
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"landing directory {self.path!r} does not exist")
        self.archive = self.archive or os.path.join(self.path, "_processed")
        os.makedirs(self.archive, exist_ok=True)
        self.builder = EventBuilder(self.spec, self.guard, self.tenant_idle_timeout_s)
        self.ledger: SourceLedger | None = None
        self._seen: set[str] = set()  # read by this run, not yet archived
        if self.out_dir is not None:
            self.ledger = SourceLedger(self.out_dir, ms(self.spec.size_s), ms(self.spec.allowed_lateness_s))
            self.builder.final = self.ledger.final_windows()

    @property
    def stats(self) -> SourceStats:
        return self.builder.stats

    @property
    def final_windows(self) -> frozenset[tuple[str, int]]:
        """Windows final on disk before this run: the engine must not emit them again."""
        return frozenset(self.builder.final)

    def pending(self) -> list[str]:
        names = [n for n in os.listdir(self.path)
                 if n.endswith(INPUT_SUFFIXES) and not n.startswith((".", "_"))]
        paths = [os.path.join(self.path, n) for n in names]
        return sorted(paths, key=lambda p: (os.stat(p).st_mtime_ns, p))

    def _archive(self, path: str) -> None:
        shutil.move(path, os.path.join(self.archive, os.path.basename(path)))

    def _read(self, path: str, key: str | None, prior: dict | None) -> Iterator[Event]:
        """One file's events; with a ledger, recorded (and its dead letters written) first."""
        b, events = self.builder, []
        if prior is not None:  # read again after a restart: decide lateness as the first time
            events += b.restore(prior["wm_before"])
        wm_before, stats_before = b.clock.watermarks(), (b.stats.read, b.stats.emitted, Counter(b.stats.dead))
        events += b.file(path, again=prior is not None)
        events += b.advance_by_lag(self.max_out_of_orderness_s, prior["wm_after"] if prior else None)
        if self.ledger is not None:
            dead = [d for ev in events if isinstance(ev, DeadLetters) for d in ev.items]
            if dead:
                self._write_dead(key, dead)
            self.ledger.record(FileRead(
                key, os.path.basename(path), os.path.getsize(path), b.stats.read - stats_before[0],
                b.stats.emitted - stats_before[1], b.stats.dead - stats_before[2], wm_before,
                b.clock.watermarks(), b.clock.max_seen(), b.handed))
            events = [ev for ev in events if not isinstance(ev, DeadLetters)]  # on disk already
        failpoints.hit("source.file_recorded")
        for ev in events:
            yield ev
            if isinstance(ev, Panes):
                failpoints.hit("source.records_sent")

    def _write_dead(self, key: str, dead: list[DeadLetter]) -> None:
        from pipelines.service.durable import write_durably

        d = os.path.join(self.out_dir, "deadletter")
        os.makedirs(d, exist_ok=True)
        name = "source-" + key.replace(":", "-").replace(os.sep, "_") + ".ndjson"
        write_durably(d, name, b"".join(orjson.dumps(x.to_dict()) + b"\n" for x in dead))

    def _settle(self, ended: bool = False) -> None:
        """Retire (archive) the files whose windows are all final on disk."""
        wm = None if ended else self.builder.clock.watermarks()
        if not ended and not wm:
            return
        for name in self.ledger.settle(wm, self.outputs):
            if os.path.exists(p := os.path.join(self.path, name)):
                self._archive(p)
            self._seen.discard(name)  # a later file of the same name is a new file
        self.builder.final = self.ledger.final_windows()

    def _replay(self) -> Iterator[Event]:
        """After a restart: the files not retired, again, in their first order."""
        done: set[str] = set()
        for name in self.ledger.unretired():
            path = os.path.join(self.path, name)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"{name!r} was read by an earlier run and is not yet safe, but it is no longer in "
                    f"{self.path!r}: put it back (from {self.archive!r} or its producer) and restart")
            key = file_key(path)
            prior = self.ledger.prior(key)
            yield from self._read(path, key, prior)
            if self.on_file:
                self.on_file(path, self.stats)
            done.add(name)
        floor, wms = self.ledger.resume()  # carry on where the last run got to
        if floor is not None:
            yield from self.builder.advance(floor)
        yield from self.builder.restore(wms)
        self._seen = done

    def events(self) -> Iterator[Event]:
        """Events until the stream ends (blocking between polls), then every open window's."""
        if self.on_start:
            self.on_start()
        if self.ledger is not None:
            yield from self._replay()
        yield from self._poll()
        yield from self.builder.flush()

    def _poll(self) -> Iterator[Event]:
        start = last_new = last_settle = last_beat = time.monotonic()
        while True:
            files = [p for p in self.pending() if os.path.basename(p) not in self._seen]
            for path in files:
                if self.ledger is None:
                    yield from self.builder.file_then_advance(path, self.max_out_of_orderness_s)
                    # moved only once its events are out: a crash in between re-reads the file
                    # (at-least-once), but windows still open in the engine are lost with it
                    self._archive(path)
                else:
                    key = file_key(path)
                    prior = self.ledger.prior(key)
                    if prior is not None and prior["retired"]:  # delivered twice: counted once
                        self._archive(path)
                        continue
                    yield from self._read(path, key, prior)
                    self._seen.add(os.path.basename(path))
                    self._settle()
                if self.on_file:
                    self.on_file(path, self.stats)
            now = time.monotonic()
            closed = self.builder.idle(now)
            yield from closed
            if files or closed:
                last_beat = now
            if files:
                last_new = last_settle = now
                continue
            if os.path.exists(os.path.join(self.path, self.stop_file)):
                return
            if self.idle_timeout_s is not None and now - last_new >= self.idle_timeout_s:
                return
            if self.max_runtime_s is not None and now - start >= self.max_runtime_s:
                return
            if self.ledger is not None and now - last_settle >= self.settle_s:
                last_settle = now
                self._settle()
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                yield Heartbeat()
            time.sleep(self.poll_interval_s)

    def finish(self) -> dict:
        """After the engine drained (every window fired): settle, retire, close the ledger;
        the reconciliation over every run of this output (``{}`` without a ledger)."""
        if self.ledger is None:
            return {}
        self._settle(ended=True)
        totals = self.ledger.totals()
        self.ledger.close()
        return totals
