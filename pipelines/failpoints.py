"""Failpoints: named places where a test can have this process killed (SIGKILL) for real.

``AURA_FAILPOINTS="source.records_sent=16,sink.pane_written=40"`` kills the process the
16th time ``hit("source.records_sent")`` runs, or the 40th time ``hit("sink.pane_written")``
does, whichever comes first. Unset (always, outside crash tests) a hit is one dict lookup.
A kill point chosen by count is exact, where a kill from outside on a timer is a guess.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "AURA_FAILPOINTS"
_hits: Counter = Counter()
_lock = threading.Lock()


def parse(spec: str) -> dict[str, int]:
    """``name=count,...`` -> {name: count}; a clear error for anything else."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, count = part.partition("=")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}: expected name=count (count >= 1), got {part!r}")
        out[name] = int(count)
    return out


def hit(name: str) -> None:
    """Count one pass through failpoint ``name``; SIGKILL this process on the armed count."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    armed = parse(spec).get(name)
    if armed is None:
        return
    with _lock:
        _hits[name] += 1
        if _hits[name] == armed:
            os.kill(os.getpid(), signal.SIGKILL)
