"""Run counters shared by the DoFns of one in-process pipeline run.

Beam's own metrics would be the natural place, but on the Python BundleBasedDirectRunner
(the streaming DirectRunner, Beam 2.61) a counter keeps only one bundle's increments
(a ParDo over 5 bundles of 3 elements reports 3). The DirectRunner runs every DoFn in this
process, so a registry keyed by run id is exact. A distributed runner would need Beam
metrics instead.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

_LOCK = threading.Lock()
_RUNS: dict[str, Counter] = {}


def new_run() -> str:
    run_id = uuid.uuid4().hex
    with _LOCK:
        _RUNS[run_id] = Counter()
    return run_id


def inc(run_id: str, name: str, n: int = 1) -> None:
    with _LOCK:
        _RUNS.setdefault(run_id, Counter())[name] += n


def take(run_id: str) -> Counter:
    """The counts of a finished run (removed from the registry)."""
    with _LOCK:
        return _RUNS.pop(run_id, Counter())
