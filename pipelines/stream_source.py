"""The streaming source: telemetry files -> timestamped records, dead letters, watermarks.

Engine-agnostic. It turns batches of input (files dropped into a landing directory, or a
test's script) into a sequence of events: ``Records``, ``DeadLetters`` and ``Watermark``.
It owns the event-time watermark, so it is also where lateness is decided: a record whose
every window has expired (watermark > window end + allowed lateness) becomes a dead letter
with reason ``late`` here instead of being dropped silently by the engine later.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pipelines.telemetry import LATE, DeadLetter, ParseResult, TimestampGuard, parse_file, parse_lines
from pipelines.windowing import WindowSpec, slice_batches

INPUT_SUFFIXES = (".ndjson", ".jsonl", ".json", ".parquet")


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

    def from_result(self, res: ParseResult, source: str) -> list[Event]:
        """Events for one parsed batch from ``source`` (no watermark change)."""
        self.stats.read += res.n_read
        dead = list(res.dead)
        ok: list[dict] = []
        for rec, (raw, pos) in zip(res.records, res.origins):
            t = rec["event_time"]
            if self.watermark is not None and self.spec.is_late(t, self.watermark):
                dead.append(DeadLetter(LATE, f"event time {t:.3f}: its windows closed before "
                                       f"watermark {self.watermark:.3f}", source, pos, raw))
            else:
                ok.append(rec)
        self.stats.emitted += len(ok)
        if ok:
            top = max(r["event_time"] for r in ok)
            self.max_seen = top if self.max_seen is None else max(self.max_seen, top)
        self.stats.dead.update(d.reason for d in dead)
        events: list[Event] = []
        if ok:
            events.append(Records(slice_batches(ok, self.spec)))
        if dead:
            events.append(DeadLetters(dead))
        return events

    def lines(self, lines: Iterable[bytes], source: str) -> list[Event]:
        return self.from_result(parse_lines(lines, source, self.guard), source)

    def file(self, path: str) -> list[Event]:
        self.stats.files += 1
        return self.from_result(parse_file(path, self.guard), path)

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
        return [Watermark(t)]


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


@dataclass
class LandingDirectory:
    """Polls a directory for new telemetry files and turns each into events.

    Writers drop complete files (write ``name.tmp``, then rename); files whose names start
    with ``.`` or ``_`` or end in ``.tmp`` are ignored. A processed file is moved into
    ``archive`` so that it is read once. The watermark trails the largest event time seen
    by ``max_out_of_orderness_s``. The stream ends when ``stop_file`` appears, after
    ``idle_timeout_s`` without new files, or after ``max_runtime_s``.
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

    def __post_init__(self):
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"landing directory {self.path!r} does not exist")
        self.archive = self.archive or os.path.join(self.path, "_processed")
        os.makedirs(self.archive, exist_ok=True)
        self.builder = EventBuilder(self.spec, self.guard)

    @property
    def stats(self) -> SourceStats:
        return self.builder.stats

    def pending(self) -> list[str]:
        names = [n for n in os.listdir(self.path)
                 if n.endswith(INPUT_SUFFIXES) and not n.startswith((".", "_"))]
        paths = [os.path.join(self.path, n) for n in names]
        return sorted(paths, key=lambda p: (os.stat(p).st_mtime_ns, p))

    def events(self) -> Iterator[Event]:
        """Events until the stream ends (blocking between polls)."""
        if self.on_start:
            self.on_start()
        start = last_new = last_beat = time.monotonic()
        while True:
            files = self.pending()
            for path in files:
                yield from self.builder.file_then_advance(path, self.max_out_of_orderness_s)
                # moved only once its events are out: a crash in between re-reads the file
                # (at-least-once), it never loses it
                shutil.move(path, os.path.join(self.archive, os.path.basename(path)))
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
                yield Watermark(self.builder.watermark)
            time.sleep(self.poll_interval_s)
