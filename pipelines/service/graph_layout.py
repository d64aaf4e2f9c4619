"""A layered layout of a call graph, cheap enough to redo for every window (1,000 agents and
a few thousand calls in a few milliseconds).

Layers are call depths: an agent's layer is its shortest call distance from an entry agent
(one nobody calls); agents only reached through a cycle start a layer of their own. Within a
layer, agents are ordered by the mean position of their callers in earlier layers (one
barycentre sweep, which keeps most calls short), and a layer too tall for the canvas wraps
into sub-columns, row by row, so every agent keeps its own spot.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


def layers(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(n,) call depth of every agent (module doc)."""
    keep = src != dst
    src, dst = src[keep], dst[keep]
    order = np.argsort(src, kind="stable")
    starts = np.searchsorted(src[order], np.arange(n + 1))
    callees = dst[order]
    indeg = np.bincount(dst, minlength=n)
    outdeg = np.bincount(src, minlength=n)
    depth = np.full(n, -1, np.int64)

    def bfs(seeds: list[int], base: int) -> None:
        queue = deque(seeds)
        for s in seeds:
            depth[s] = base
        while queue:
            a = queue.popleft()
            for b in callees[starts[a]:starts[a + 1]].tolist():
                if depth[b] < 0:
                    depth[b] = depth[a] + 1
                    queue.append(b)

    bfs(np.flatnonzero(indeg == 0).tolist(), 0)
    while (left := np.flatnonzero(depth < 0)).size:  # only reached through cycles
        seed = int(left[np.argmax(outdeg[left])])
        callers = src[dst == seed]
        known = depth[callers][depth[callers] >= 0]
        bfs([seed], int(known.max()) + 1 if known.size else 0)
    return depth


def layout(n: int, src: np.ndarray, dst: np.ndarray, aspect: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """x, y in [0, 1] of every agent: layers left to right (module doc); ``aspect`` is the
    drawing's width / height, which sets how many rows a layer may use before it wraps."""
    if n == 0:
        return np.zeros(0), np.zeros(0)
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    depth = layers(n, src, dst)
    rows_max = max(8, math.ceil(math.sqrt(n / aspect)))
    pos = np.full(n, np.nan)  # an agent's place within its layer, 0..1, once its layer is placed
    x, y = np.zeros(n), np.zeros(n)
    columns: list[tuple[np.ndarray, int]] = []  # per layer: agents in order, sub-columns
    for d in range(int(depth.max()) + 1):
        members = np.flatnonzero(depth == d)
        if members.size == 0:
            continue
        inward = np.isin(dst, members) & (depth[src] < d)
        sums = np.bincount(dst[inward], pos[src[inward]], minlength=n)
        counts = np.bincount(dst[inward], minlength=n)
        key = np.where(counts[members] > 0, sums[members] / np.maximum(counts[members], 1), 0.5)
        members = members[np.lexsort((members, key))]
        pos[members] = (np.arange(members.size) + 0.5) / members.size
        columns.append((members, math.ceil(members.size / rows_max)))
    units = sum(s for _, s in columns) + len(columns) - 1  # a blank column between layers
    at = 0
    for members, sub in columns:
        k = np.arange(members.size)
        rows = math.ceil(members.size / sub)
        x[members] = (at + k % sub + 0.5) / units
        y[members] = (k // sub + 0.5) / rows
        at += sub + 1
    return x, y
