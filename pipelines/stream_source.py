"""The streaming source: telemetry files -> timestamped records, dead letters, watermarks.

Engine-agnostic. It turns batches of input (files dropped into a landing directory, or a
test's script) into a sequence of events: ``Records``, ``DeadLetters`` and ``Watermark``.
It owns the event-time watermark, so it is also where lateness is decided: a record whose
every window has expired (watermark > window end + allowed lateness) becomes a dead letter
with reason ``late`` here instead of being dropped silently by the engine later.

With a ledger (``pipelines.source_ledger``) the landing directory is crash-safe: a file
stays in the landing directory until every window it feeds is final on disk; a restarted
source first reads again, in their first order and with their first watermarks, the files
not yet retired, then goes on with new ones.
"""

from __future__ import annotations

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
from pipelines.windowing import WindowSpec, ms, slice_batches


@dataclass(frozen=True)
class Records:
    """Record batches: ((tenant, [record, ...]), slice start), see ``slice_batches``."""

    items: list[tuple[tuple[str, list[dict]], float]]

    @property
    def n_records(self) -> int:
        return sum(len(batch) for (_, batch), _ in self.items)


@dataclass(frozen=True)
class DeadLetters:
    items: list[DeadLetter]


@dataclass(frozen=True)
class Watermark:
    t: float


Event = Records | DeadLetters | Watermark


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
    """Parses batches, applies the timestamp guard and the lateness gate, tracks counts."""

    def __init__(self, spec: WindowSpec, guard: TimestampGuard | None = None):
        self.spec = spec
        self.guard = guard or TimestampGuard()
        self.watermark: float | None = None
        self.max_seen: float | None = None
        self.stats = SourceStats()
        self.final: set[tuple[str, int]] = set()  # (tenant, window ms) already final on disk

    def _closed(self, rec: dict, again: bool) -> bool:
        """Every window of the record fired its final pane (by watermark, or in an earlier run;
        a file read ``again`` went to those windows the first time, so only the watermark counts)."""
        t = rec["event_time"]
        if self.watermark is not None and self.spec.is_late(t, self.watermark):
            return True
        return not again and bool(self.final) and all((rec["tenant"], ms(s)) in self.final
                                                      for s in self.spec.starts(t))

    def from_result(self, res: ParseResult, source: str, again: bool = False) -> list[Event]:
        """Events for one parsed batch from ``source`` (no watermark change); ``again``: read
        again after a restart."""
        self.stats.read += res.n_read
        dead = list(res.dead)
        ok: list[dict] = []
        for rec, (raw, pos) in zip(res.records, res.origins):
            t = rec["event_time"]
            if self._closed(rec, again):
                dead.append(DeadLetter(LATE, f"event time {t:.3f}: its windows closed before "
                                       f"watermark {self.watermark or float('-inf'):.3f}", source, pos, raw))
            else:
                ok.append(rec)
        self.stats.emitted += len(ok)
        if ok:
            top = max(r["event_time"] for r in ok)
            self.max_seen = top if self.max_seen is None else max(self.max_seen, top)
        self.stats.dead.update(d.reason for d in dead)
        observe.records(ok, dead)
        events: list[Event] = []
        if ok:
            events.append(Records(slice_batches(ok, self.spec)))
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
        trace_parse(events, self.spec, source, t0)
        return events

    def file_then_advance(self, path: str, lag_s: float) -> list[Event]:
        """Events of one file, then the watermark moved to (largest event time - lag)."""
        events = self.file(path)
        if self.max_seen is not None:
            events += self.advance(self.max_seen - lag_s)
        return events

    def advance(self, t: float) -> list[Event]:
        """Move the watermark forward to ``t`` (never backwards)."""
        if self.watermark is not None and t <= self.watermark:
            return []
        self.watermark = t
        self.guard.watermark = t
        observe.watermark(self.max_seen, t)
        return [Watermark(t)]


def trace_parse(events: list[Event], spec: WindowSpec, source: str, t0: int) -> None:
    """A ``parse`` span (from ``t0`` to now) in the trace of every window the parsed batch
    feeds (tracing on only)."""
    if tracing.enabled():
        end, name = time.time_ns(), os.path.basename(source)
        for (tenant, window_ms), n in _windows_of(events, spec).items():
            tracing.record_span("parse", tenant, window_ms, t0, end, source=name, records=n)


def scripted_events(script: Iterable[tuple], spec: WindowSpec,
                    guard: TimestampGuard | None = None) -> tuple[list[Event], SourceStats]:
    """Events for a test script of ``("lines", source, [bytes, ...])`` and
    ``("watermark", t)`` steps."""
    b = EventBuilder(spec, guard)
    events: list[Event] = []
    for step in script:
        if step[0] == "lines":
            events += b.lines(step[2], step[1])
        elif step[0] == "watermark":
            events += b.advance(float(step[1]))
        else:
            raise ValueError(f"unknown script step {step[0]!r}")
    return events, b.stats


def _windows_of(events: list[Event], spec: WindowSpec) -> Counter:
    """(tenant, window ms) -> records handed to that window by these events."""
    out: Counter = Counter()
    for ev in events:
        if isinstance(ev, Records):
            for (tenant, batch), start in ev.items:
                for w in spec.starts(start):
                    out[(tenant, ms(w))] += len(batch)
    return out


@dataclass
class LandingDirectory:
    """Polls a directory for new telemetry files and turns each into events.

    Writers drop complete files (write ``name.tmp``, then rename); files whose names start
    with ``.`` or ``_`` or end in ``.tmp`` are ignored. The watermark trails the largest event
    time seen by ``max_out_of_orderness_s``. The stream ends when ``stop_file`` appears, after
    ``idle_timeout_s`` without new files, or after ``max_runtime_s``.

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
    poll_interval_s: float = 0.2
    idle_timeout_s: float | None = None
    max_runtime_s: float | None = None
    stop_file: str = "_STOP"
    heartbeat_s: float = 5.0
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
        self.builder = EventBuilder(self.spec, self.guard)
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
        b = self.builder
        if prior is not None:  # read again after a restart: decide lateness as the first time
            b.watermark = b.guard.watermark = prior["wm_before"]
        wm_before, stats_before = b.watermark, (b.stats.read, b.stats.emitted, Counter(b.stats.dead))
        events = b.file(path, again=prior is not None)
        if b.max_seen is not None:
            target = b.max_seen - self.max_out_of_orderness_s
            if prior is not None and prior["wm_after"] is not None:
                target = max(target, prior["wm_after"])
            events += b.advance(target)
        if self.ledger is not None:
            dead = [d for ev in events if isinstance(ev, DeadLetters) for d in ev.items]
            if dead:
                self._write_dead(key, dead)
            self.ledger.record(FileRead(
                key, os.path.basename(path), os.path.getsize(path), b.stats.read - stats_before[0],
                b.stats.emitted - stats_before[1], b.stats.dead - stats_before[2], wm_before,
                b.watermark, b.max_seen, _windows_of(events, self.spec)))
            events = [ev for ev in events if not isinstance(ev, DeadLetters)]  # on disk already
        failpoints.hit("source.file_recorded")
        for ev in events:
            yield ev
            if isinstance(ev, Records):
                failpoints.hit("source.records_sent")

    def _write_dead(self, key: str, dead: list[DeadLetter]) -> None:
        from pipelines.service.durable import write_durably

        d = os.path.join(self.out_dir, "deadletter")
        os.makedirs(d, exist_ok=True)
        name = "source-" + key.replace(":", "-").replace(os.sep, "_") + ".ndjson"
        write_durably(d, name, b"".join(orjson.dumps(x.to_dict()) + b"\n" for x in dead))

    def _settle(self, ended: bool = False) -> None:
        """Retire (archive) the files whose windows are all final on disk."""
        wm = None if ended else self.builder.watermark
        if not ended and wm is None:
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
        wm, top = self.ledger.resume()  # carry on where the last run got to
        b = self.builder
        if top is not None:
            b.max_seen = top if b.max_seen is None else max(b.max_seen, top)
        if wm is not None:
            yield from b.advance(wm)
        self._seen = done

    def events(self) -> Iterator[Event]:
        """Events until the stream ends (blocking between polls)."""
        if self.on_start:
            self.on_start()
        if self.ledger is not None:
            yield from self._replay()
        start = last_new = last_beat = time.monotonic()
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
            if files:
                last_new = last_beat = now
                continue
            if os.path.exists(os.path.join(self.path, self.stop_file)):
                return
            if self.idle_timeout_s is not None and now - last_new >= self.idle_timeout_s:
                return
            if self.max_runtime_s is not None and now - start >= self.max_runtime_s:
                return
            if now - last_beat >= self.heartbeat_s and self.builder.watermark is not None:
                last_beat = now  # re-state the watermark so the consumer knows we are alive
                if self.ledger is not None:
                    self._settle()
                yield Watermark(self.builder.watermark)
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
