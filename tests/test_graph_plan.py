"""The column path of the graph sink without a server: numpy change detection against the
per-row reference (``sink.select_changed`` / ``sink.remember``), the transaction and lane
cuts, the spill form of column steps, and the vectorised top-k of implicated agents."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.graph import plan as P
from pipelines.graph import rows as R
from pipelines.graph import steps as T
from pipelines.graph.delta import KeyTable, changed_rows
from pipelines.graph.sink import Batch, GraphSink, GraphSpec, changed, remember, select_changed
from pipelines.graph.synthetic import fleet_windows
from pipelines.topology.filtrations import StressFiltration

VALUES = [1.0, 1.0, 1.001, 2.0, 50.0, 50.4, 0.0, None]


def _stream(rng: random.Random, refresh: int):
    """Windows (maybe shuffled) of rows {key, window, v}; keys in every window with a refresh."""
    keys = [f"k{i}" for i in range(rng.randint(1, 8))]
    windows = list(range(0, 10_000 * rng.randint(2, 8), 10_000))
    for w in windows:
        yield w, [{"key": k, "window": w, "v": rng.choice(VALUES)}
                  for k in keys if refresh or rng.random() < 0.9]


def _arr(rows: list[dict]) -> np.ndarray:
    return np.array([[np.nan if r["v"] is None else r["v"]] for r in rows], np.float64).reshape(-1, 1)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), eps=st.sampled_from([-1.0, 0.0, 0.01, 0.1]), shuffled=st.booleans())
def test_without_refresh_the_table_decides_exactly_as_the_per_row_reference(seed, eps, shuffled):
    rng = random.Random(seed)
    windows = list(_stream(rng, 0))
    if shuffled:
        rng.shuffle(windows)
    table, cache = KeyTable(1), {}
    for w, rows in windows:
        ref = select_changed(rows, cache, lambda r: r["key"], lambda r: (r["v"],), eps, 10_000, 0)
        slots = table.slots([r["key"] for r in rows])
        d = table.decide(slots, _arr(rows), w, 10_000, eps, 0)
        assert not d.touch.any()
        assert [r["key"] for r, x in zip(rows, d.written) if x] == [r["key"] for r in ref]
        remember(rows, ref, cache, lambda r: r["key"], lambda r: (r["v"],))
        table.remember(slots, _arr(rows), w, d)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), eps=st.sampled_from([0.0, 0.01, 0.1]), refresh=st.sampled_from([0, 1, 3]),
       shuffled=st.booleans())
def test_table_keeps_the_graph_within_epsilon_and_last_window_within_refresh(seed, eps, refresh, shuffled):
    """A simulated graph applies the decisions as the Cypher does (MERGE: min first_window,
    values and last_window from a window not older than held; UPDATE: the same guard;
    TOUCH: last_window only): it stays within epsilon of the newest values seen, its
    first_window is exact, the table mirrors it, and with a refresh and in-order windows
    no last_window lags by ``refresh`` slots or more."""
    rng = random.Random(seed)
    windows = list(_stream(rng, refresh))
    if shuffled:
        rng.shuffle(windows)
    table, graph, newest = KeyTable(1), {}, {}
    for w, rows in windows:
        slots = table.slots([r["key"] for r in rows])
        vals = _arr(rows)
        d = table.decide(slots, vals, w, 10_000, eps, refresh)
        assert not ((d.merge & d.update) | (d.merge & d.touch) | (d.update & d.touch)).any()
        for i, r in enumerate(rows):
            v, last, first = graph.get(r["key"], (None, -1, w))
            if d.merge[i] or d.update[i]:
                first = min(first, w)
                if w >= last:
                    v, last = r["v"], w
            elif d.touch[i] and w > last:
                last = w
            if d.written[i]:
                graph[r["key"]] = (v, last, first)
        table.remember(slots, vals, w, d)
        for r in rows:
            k, (v, last, first) = r["key"], newest.get(r["key"], (None, -1, w))
            newest[k] = (r["v"], w, min(first, w)) if w >= last else (v, last, min(first, w))
        for k, (v, _, first) in newest.items():
            held = graph[k][0]
            assert not changed((held,), (v,), eps)  # within epsilon of the newest values
            assert graph[k][2] == first
            s = table.index[k]
            assert table.at[s] == graph[k][1] and (np.isnan(table.values[s, 0]) if held is None
                                                  else table.values[s, 0] == held)
        if refresh and not shuffled:
            for r in rows:
                assert w - graph[r["key"]][1] < refresh * 10_000


def test_changed_rows_matches_changed():
    rng = random.Random(3)
    for eps in (-1.0, 0.0, 0.05):
        old = [[rng.choice(VALUES) for _ in range(3)] for _ in range(300)]
        new = [[rng.choice(VALUES) for _ in range(3)] for _ in range(300)]
        arr = lambda m: np.array([[np.nan if x is None else x for x in r] for r in m])  # noqa: E731
        assert changed_rows(arr(old), arr(new), eps).tolist() == [
            changed(tuple(o), tuple(n), eps) for o, n in zip(old, new)]


def test_snapshot_plan_writes_what_the_row_path_writes():
    """Same snapshots, same decisions (refresh off: a touch is the column path's own) and
    the same values in the rows written."""
    sink = GraphSink(GraphSpec("bolt://unused", refresh_windows=0, row_path=True))
    col = GraphSink(GraphSpec("bolt://unused", refresh_windows=0))
    for s in fleet_windows(300, 4, tenant="p", seed=2, stressed_frac=0.05):
        (rows_batch, done_rows), (col_batch, done_col) = sink.snapshot_batch(s), col.snapshot_batch(s)
        by_key = {}
        for name, payload in rows_batch.steps[:2]:
            for r in payload:
                by_key[(name, r.get("key") or (r["src"], r["dst"]))] = r
        got = {}
        for name, payload in col_batch.steps:
            if name.startswith(("agents_", "calls_")):
                c = payload["columns"]
                for i in range(T.n_rows(payload)):
                    kind = name.split("_")[0]
                    key = c["key"][i] if kind == "agents" else (c["src"][i], c["dst"][i])
                    got[(kind, key)] = {k: v[i] for k, v in c.items()}
        assert set(got) == set(by_key)
        for (kind, key), row in got.items():
            ref = by_key[(kind, key)]
            if kind == "agents":
                assert {k: v for k, v in row.items() if k != "key" and v is not None} == ref["props"]
            else:
                assert (row["weight"], row["errors"], row["latency_ms"]) == (
                    ref["weight"], ref["errors"], ref["latency_ms"])
        done_rows()
        done_col()
    for k in ("agent_rows", "call_rows"):
        assert col.stats[k] == sink.stats[k]


def test_a_spilled_column_batch_replays_as_merge_without_touches():
    payload = {"scalars": {"tenant": "t", "window": 1}, "columns": {"key": ["t/a"]}}
    b = Batch("snapshot", "t", 1, 0, [("agents_update", payload), ("agents_touch", payload),
                                      ("calls_touch", payload), ("window_snapshot", [{"key": "t/1"}])])
    doc = Batch.from_json(b.to_json())
    assert [n for n, _ in doc.steps] == ["agents_merge", "window_snapshot"]
    assert doc.steps[0][1] == payload


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 23), min_size=1, max_size=6), size=st.integers(1, 7),
       parallel=st.integers(1, 3), columns=st.booleans())
def test_transactions_and_lanes_keep_every_row_once_in_order(sizes, size, parallel, columns):
    names = [f"s{i}{'_update' if i % 2 else '_merge'}" for i in range(len(sizes))]
    steps = []
    for name, n in zip(names, sizes):
        rows = [f"{name}:{j}" for j in range(n)]
        steps.append((name, {"scalars": {"w": 1}, "columns": {"x": rows}} if columns else rows))
    got: dict[str, list] = {}
    plan = T.stages(steps, size, parallel, P.splittable)
    for lanes in plan:
        for lane in lanes:
            for tx in lane:
                assert sum(T.n_rows(p) for _, p in tx) <= size
                for name, p in tx:
                    got.setdefault(name, []).extend(p["columns"]["x"] if columns else p)
        if len(lanes) > 1:
            assert len({n for lane in lanes for tx in lane for n, _ in tx}) == 1
            assert P.splittable(lanes[0][0][0][0]) and len(lanes) <= parallel
    assert got == {n: [f"{n}:{j}" for j in range(k)] for n, k in zip(names, sizes) if k}
    order = [n for lanes in plan for lane in lanes for tx in lane for n, _ in tx]
    assert sorted(set(order), key=order.index) == [n for n, k in zip(names, sizes) if k]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), top_k=st.integers(1, 8))
def test_implicated_top_k_equals_the_full_sort(seed, top_k):
    snap = fleet_windows(60, 1, tenant="i", seed=seed, stressed_frac=0.1)[0]
    stress = StressFiltration(50.0, 1000.0)
    score = np.round(R.involvement(snap, stress), 1)  # ties
    full = sorted((i for i in range(len(score)) if score[i] > 0), key=lambda i: (-score[i], snap.agents[i]))
    want = [(snap.agents[i], round(float(score[i]), 6)) for i in full[:top_k]]
    assert R.implicated(snap, stress, top_k, score) == want
