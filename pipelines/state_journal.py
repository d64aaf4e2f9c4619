"""A durable journal of a streaming stage's keyed state, so a restarted job carries on as if
it had never stopped.

Engines with checkpoints (Flink) keep keyed state for us; Beam's DirectRunner does not. A
stage that keeps per-tenant state (the sequence features' recent windows, the predictor's
history and calibration baseline) writes the state it reached after each element here:
``<out>/_state/<stage>/tenant=<t>/<seq>-<window ms>-<pane>.pkl``, ``seq`` counting the
tenant's elements in processing order. After a crash the job reads again the windows that
were not final; the first of them finds, here, the state the first run had just before it,
so every replayed element is computed from exactly the same state as the first time.
"""

from __future__ import annotations

import os
import pickle
import uuid

STATE_DIR = "_state"


class StateJournal:
    """One stage's journal; ``keep`` entries per tenant (older ones are pruned)."""

    def __init__(self, out_dir: str, stage: str, keep: int = 64):
        self.root, self.keep = os.path.join(out_dir, STATE_DIR, stage), keep

    def _dir(self, tenant: str) -> str:
        return os.path.join(self.root, f"tenant={tenant}")

    def _entries(self, tenant: str) -> list[tuple[int, int, int, str]]:
        """(seq, window ms, pane, path), oldest first."""
        d = self._dir(tenant)
        if not os.path.isdir(d):
            return []
        out = []
        for name in os.listdir(d):
            if name.endswith(".pkl"):
                seq, window, pane = name.removesuffix(".pkl").split("-")
                out.append((int(seq), int(window), int(pane), os.path.join(d, name)))
        return sorted(out)

    def save(self, tenant: str, seq: int, window_ms: int, pane: int, state) -> None:
        """The state after the tenant's ``seq``-th element (window ``window_ms``, ``pane``)."""
        d = self._dir(tenant)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{seq:012d}-{window_ms}-{pane}.pkl")
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        entries = self._entries(tenant)
        for *_, old in entries[:-self.keep]:
            os.remove(old)

    def restore(self, tenant: str, window_ms: int, pane: int):
        """(seq, state) the tenant had just before its element (``window_ms``, ``pane``) was
        processed the first time (the latest state if it never was); None: start fresh."""
        entries = self._entries(tenant)
        for i, (_, w, p, _) in enumerate(entries):
            if (w, p) == (window_ms, pane):
                entries = entries[:i]
                break
        if not entries:
            return None
        seq, *_, path = entries[-1]
        with open(path, "rb") as fh:
            return seq, pickle.load(fh)
