"""The source's window panes into the streaming Beam job.

Beam has one watermark per stream, so per-tenant event time cannot be Beam windows: the
source (``pipelines.tenant_time``) decides every pane, and Beam carries them in its global
window, in order, to the stages after windowing. A pane travels through the TestStream (or
its gRPC service) as a small reference: the service and the DirectRunner run in this
process, so the pane itself waits in a process-local registry until ``SnapshotPane`` pops
it. That spares pickling every record of a window through the event service: measured, a
window of 30 agents x 10 s (300 records) is 49 KB and ~2 ms to encode and decode with
Beam's PickleCoder, against 5 bytes and ~1 us for a reference; every late pane carries the
whole window again. A pane is popped when taken; a failed run leaves its untaken panes here.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator

import apache_beam as beam

from pipelines.beam.transforms import pane_snapshot
from pipelines.stream_source import DeadLetters, Event, Heartbeat, Panes
from pipelines.tenant_time import Pane

PANES, DEAD = "panes", "dead"

_registry: dict[int, Pane] = {}
_ids = itertools.count(1)
_lock = threading.Lock()


def put(pane: Pane) -> int:
    """Keep ``pane`` until the job takes it; its reference."""
    with _lock:
        ref = next(_ids)
        _registry[ref] = pane
    return ref


def take(ref: int) -> Pane:
    """The pane behind ``ref``, once (a reference from another process is a clear error)."""
    with _lock:
        pane = _registry.pop(ref, None)
    if pane is None:
        raise RuntimeError(f"pane {ref} is not in this process's registry: the streaming job must run "
                           f"in the process of its source (DirectRunner)")
    return pane


def steps(events: Iterable[Event]) -> Iterator[tuple]:
    """Source events -> TestStream steps: ``("add", tag, [(value, timestamp s), ...])`` and
    ``("watermark", t)``. Every batch of panes gets the next sequence number as its timestamp
    and the watermark moves to it after them, so the runner processes them in order; dead
    letters go out at timestamp 0 (the global window keeps them); a heartbeat re-states the
    watermark, so the event service never goes quiet long enough for Beam to end the stream."""
    seq = 0
    for ev in events:
        if isinstance(ev, Panes):
            seq += 1
            yield "add", PANES, [(put(p), float(seq)) for p in ev.items]
            yield "watermark", float(seq)
        elif isinstance(ev, DeadLetters):
            yield "add", DEAD, [(d, 0.0) for d in ev.items]
        elif isinstance(ev, Heartbeat):
            yield "watermark", float(seq)
        else:
            raise TypeError(f"not a source event: {ev!r}")


class SnapshotPane(beam.DoFn):
    """A pane reference -> the pane's WindowSnapshot (``pane_snapshot``: counted, observed,
    skipped for a window already final on disk)."""

    def __init__(self, run_id: str, final: frozenset[tuple[str, int]] = frozenset()):
        self.run_id, self.final = run_id, final

    def process(self, ref: int):
        p = take(ref)
        snap = pane_snapshot(self.run_id, self.final, p.tenant, p.start, p.end, p.records, p.index, p.timing)
        if snap is not None:
            yield snap
