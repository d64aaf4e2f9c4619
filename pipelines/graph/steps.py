"""Steps of a graph batch and how they are cut into transactions.

A step is ``(statement name, payload)``: a list of row dicts (``UNWIND $rows``), or a
column payload ``{"scalars": {...}, "columns": {name: list}}`` (``pipelines.graph.plan``)
whose columns have one entry per row. Transactions take at most ``size`` rows, in step
order. With ``parallel`` > 1 a step larger than one transaction is split into that many
contiguous lanes, each a sequence of transactions in its own session, run concurrently;
the next step starts when every lane is done. Only steps that rewrite existing records
are split (the sink's ``*_update`` / ``*_touch``): creating edges rewrites both agents'
edge lists, and concurrent creations on shared agents conflict.
"""

from __future__ import annotations

from collections.abc import Callable

Step = tuple[str, list | dict]
Transaction = list[Step]


def n_rows(payload: list | dict) -> int:
    if isinstance(payload, list):
        return len(payload)
    cols = payload["columns"]
    return len(next(iter(cols.values()))) if cols else 0


def cut(payload: list | dict, i: int, j: int) -> list | dict:
    """Rows ``i:j`` of a payload."""
    if isinstance(payload, list):
        return payload[i:j]
    return {"scalars": payload["scalars"], "columns": {k: v[i:j] for k, v in payload["columns"].items()}}


def params(payload: list | dict) -> dict:
    """The statement's parameters."""
    if isinstance(payload, list):
        return {"rows": payload}
    return {**payload["scalars"], **payload["columns"]}


def transactions(steps: list[Step], size: int) -> list[Transaction]:
    """Split steps into transactions of at most ``size`` rows, keeping step order."""
    groups: list[Transaction] = [[]]
    used = 0
    for name, payload in steps:
        n = n_rows(payload)
        for i in range(0, n, size):
            chunk = cut(payload, i, i + size)
            k = min(size, n - i)
            if used and used + k > size:
                groups.append([])
                used = 0
            groups[-1].append((name, chunk))
            used += k
    return [g for g in groups if g]


def stages(steps: list[Step], size: int, parallel: int = 1,
           can_split: Callable[[str], bool] = lambda name: True) -> list[list[list[Transaction]]]:
    """Stages in order; a stage is lanes run concurrently; a lane is transactions in order
    (module doc). Only steps ``can_split`` accepts are split into lanes."""
    out: list[list[list[Transaction]]] = []
    small: list[Step] = []
    for name, payload in steps:
        n = n_rows(payload)
        if parallel <= 1 or n <= size or not can_split(name):
            small.append((name, payload))
            continue
        if small:
            out.append([transactions(small, size)])
            small = []
        per = -(-n // parallel)
        out.append([transactions([(name, cut(payload, i, i + per))], size) for i in range(0, n, per)])
    if small:
        out.append([transactions(small, size)])
    return [s for s in out if any(s)]
