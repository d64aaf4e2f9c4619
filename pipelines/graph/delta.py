"""Change detection over whole windows in numpy: the rules of ``sink.select_changed`` /
``sink.remember`` (kept there as the per-row reference), one array operation per window
instead of one Python call per row.

A ``KeyTable`` holds, per key of one kind (agents or CALLS edges of one tenant), a slot with
the values last written, the window they were written in (``at``: the graph's
``last_window``), the newest and the earliest window seen, and the CRC of the key that
spreads the staggered refresh. ``decide`` sorts the rows of a window (all rows of a
snapshot share its window start) into:

- ``merge``: new keys, and windows earlier than any seen (``first_window`` moves): the
  general MERGE statement, with every guard;
- ``update``: held keys, the newest window (or a redelivery of it), values moved by more
  than epsilon: MATCH by key and SET the values (the node or edge is known to exist);
- ``touch``: held keys, a newer window, values within epsilon, staggered refresh due: only
  ``last_window`` is rewritten (the values held are already within epsilon of the truth,
  since change detection compares against what was written);
- the rest is skipped.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

_GROW = 1024


def changed_rows(old: np.ndarray, new: np.ndarray, epsilon: float) -> np.ndarray:
    """(K,) True where any value moved by more than ``epsilon * max(1, |old|)``; NaN is
    "unknown" and equals only NaN (``sink.changed`` with None)."""
    if old.shape[1] == 0:
        return np.zeros(len(old), bool)
    o_nan, n_nan = np.isnan(old), np.isnan(new)
    with np.errstate(invalid="ignore"):
        moved = np.abs(new - old) > epsilon * np.maximum(1.0, np.abs(old))
    return np.where(o_nan | n_nan, o_nan != n_nan, moved).any(axis=1)


def refresh_due(crc: np.ndarray, window_ms: int, window_len_ms: int, every: int) -> np.ndarray:
    """``sink.refresh_due`` for many keys: each key comes due once every ``every`` slots."""
    if every <= 0:
        return np.zeros(len(crc), bool)
    slot = window_ms // max(window_len_ms, 1)
    return (crc + slot) % every == 0


@dataclass
class Decision:
    """Row masks of one window (``KeyTable.decide``); disjoint."""

    merge: np.ndarray
    update: np.ndarray
    touch: np.ndarray

    @property
    def written(self) -> np.ndarray:
        return self.merge | self.update | self.touch


class KeyTable:
    """Change-detection state of one kind of row of one tenant (module doc)."""

    def __init__(self, width: int, crc_text=str):
        self.width, self._crc_text = width, crc_text
        self.index: dict = {}
        self.keys: list = []
        self._last: tuple = ([], np.zeros(0, np.int64))
        self._key_array = np.zeros(0, dtype=object)
        self._alloc(0)

    def _alloc(self, n: int) -> None:
        self.values = np.full((n, self.width), np.nan)
        self.at = np.zeros(n, np.int64)
        self.seen = np.zeros(n, np.int64)
        self.first = np.zeros(n, np.int64)
        self.crc = np.zeros(n, np.int64)
        self.present = np.zeros(n, bool)

    def key_array(self) -> np.ndarray:
        """The keys by slot as an object array (cached until keys are added)."""
        if len(self._key_array) != len(self.keys):
            self._key_array = np.array(self.keys + [None], dtype=object)[:-1]
        return self._key_array

    def __len__(self) -> int:
        return int(self.present.sum())

    def clear(self) -> None:
        """Forget everything (a spilled batch: the next window is written in full)."""
        self.index.clear()
        self.keys.clear()
        self._last = ([], np.zeros(0, np.int64))
        self._key_array = np.zeros(0, dtype=object)
        self._alloc(0)

    def slots(self, ident: list | np.ndarray, make_keys=None) -> np.ndarray:
        """Slot of each key (new keys get a slot, not yet present). ``ident``: the keys, or
        what ``make_keys(ident)`` makes them from; the same ``ident`` as the last call (the
        same fleet as the window before): no lookups."""
        last, last_slots = self._last
        if len(ident) == len(last) and (np.array_equal(ident, last) if isinstance(ident, np.ndarray)
                                        else ident == last):
            return last_slots
        keys = make_keys(ident) if make_keys else ident
        out = self._lookup(keys.tolist() if isinstance(keys, np.ndarray) else keys)
        self._last = (ident.copy() if isinstance(ident, np.ndarray) else list(ident), out)
        return out

    def _lookup(self, keys: list) -> np.ndarray:
        get = self.index.get
        out = np.fromiter((get(k, -1) for k in keys), np.int64, len(keys))
        missing = np.flatnonzero(out < 0)
        if len(missing):
            start = len(self.keys)
            fresh = []
            for i in missing.tolist():
                k = keys[i]
                slot = self.index.get(k)
                if slot is None:
                    slot = self.index[k] = len(self.keys)
                    self.keys.append(k)
                    fresh.append(k)
                out[i] = slot
            self._grow(len(self.keys))
            self.crc[start:len(self.keys)] = [zlib.crc32(self._crc_text(k).encode()) for k in fresh]
        return out

    def _grow(self, n: int) -> None:
        if n <= len(self.at):
            return
        cap = max(n, 2 * len(self.at), _GROW)
        old = (self.values, self.at, self.seen, self.first, self.crc, self.present)
        self._alloc(cap)
        k = len(old[1])
        self.values[:k], self.at[:k], self.seen[:k], self.first[:k], self.crc[:k], self.present[:k] = old

    def decide(self, slots: np.ndarray, values: np.ndarray, window: int, window_len_ms: int,
               epsilon: float, refresh: int) -> Decision:
        """Which rows of a window to write, and how (module doc)."""
        held = self.present[slots]
        first, seen = self.first[slots], self.seen[slots]
        merge = ~held | (window < first)
        current = held & ~merge & (window >= seen)
        moved = changed_rows(self.values[slots], values, epsilon)
        update = current & moved
        due = refresh_due(self.crc[slots], window, window_len_ms, refresh)
        touch = current & ~moved & (window > seen) & due
        return Decision(merge, update, touch)

    def remember(self, slots: np.ndarray, values: np.ndarray, window: int, d: Decision) -> None:
        """After ``d`` was written: what the graph holds now, and which windows were seen."""
        held = self.present[slots]
        fresh = slots[d.merge & ~held]
        self.values[fresh], self.at[fresh] = values[d.merge & ~held], window
        self.seen[fresh] = self.first[fresh] = window
        self.present[fresh] = True
        old = held
        take = old & (d.merge | d.update) & (window >= self.at[slots])
        self.values[slots[take]], self.at[slots[take]] = values[take], window
        tick = old & d.touch & (window >= self.at[slots])
        self.at[slots[tick]] = window
        s = slots[old]
        self.seen[s] = np.maximum(self.seen[s], window)
        self.first[s] = np.minimum(self.first[s], window)


def tenant_tables(width: int) -> tuple[KeyTable, KeyTable]:
    """(agents, CALLS edges) of one tenant. An edge's key is the slot pair of its agents
    (``src << 32 | dst``); its refresh CRC is that of ``str((src key, dst key))``, as the
    per-row path spreads it."""
    agents = KeyTable(width)
    mask = (1 << 32) - 1
    calls = KeyTable(3, lambda code: str((agents.keys[code >> 32], agents.keys[code & mask])))
    return agents, calls
