"""The graph sink against a real embedded ArcadeDB Bolt server (started by PID, stopped by
PID): constraints, idempotent replay, change detection, spill and replay after the server
is killed, an unreachable server, the Beam wiring and the query side."""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import cli
from pipelines.beam import job
from pipelines.graph import rows as R
from pipelines.graph.server import EmbeddedGraphServer
from pipelines.graph.sink import (
    GraphSink,
    GraphSpec,
    GraphUnavailable,
    SinkState,
    pending_batches,
    remember,
    select_changed,
)
from pipelines.graph.synthetic import fleet_windows
from pipelines.inputs import expand_inputs
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.sequence import fold
from pipelines.triton_server import free_port
from pipelines.windowing import WindowSpec


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = EmbeddedGraphServer(str(tmp_path_factory.mktemp("graph"))).start()
    yield srv
    assert srv.stop() == 0  # SIGTERM: a clean exit
    assert srv.process.poll() is not None


def spec_for(srv: EmbeddedGraphServer, **kw) -> GraphSpec:
    return GraphSpec(srv.uri, *srv.auth, **kw)


def run(driver, cypher: str, **params) -> list[dict]:
    records, _, _ = driver.execute_query(cypher, params, database_="neo4j")
    return [r.data() for r in records]


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v if isinstance(v, str | int | float | bool | type(None)) else str(v)


def dump(driver, tenant: str) -> tuple[list, list]:
    """Every node and relationship of a tenant, properties included, with the tenant name
    replaced by T (so that two tenants written from the same stream compare equal)."""
    def norm(x):
        return json.loads(json.dumps(_plain(x)).replace(tenant, "T"))

    nodes = run(driver, "MATCH (n) WHERE n.tenant = $t OR (n:Tenant AND n.id = $t) "
                "RETURN labels(n) AS labels, properties(n) AS props", t=tenant)
    rels = run(driver, "MATCH (a)-[r]->(b) WHERE coalesce(a.tenant, a.id) = $t "
               "RETURN type(r) AS type, properties(r) AS props, coalesce(a.key, a.id) AS src, "
               "coalesce(b.key, b.id) AS dst", t=tenant)
    return (sorted(json.dumps(norm(n), sort_keys=True) for n in nodes),
            sorted(json.dumps(norm(r), sort_keys=True) for r in rels))


def counts(driver, tenant: str) -> dict:
    nodes, rels = dump(driver, tenant)
    out: dict = {}
    for n in nodes:
        label = json.loads(n)["labels"][0]
        out[label] = out.get(label, 0) + 1
    for r in rels:
        t = json.loads(r)["type"]
        out[t] = out.get(t, 0) + 1
    return out


def stream(tenant: str, n_agents: int = 150, n_windows: int = 4, seed: int = 1, **kw) -> list[tuple]:
    """(kind, payload) items of a synthetic run: snapshots, feature rows, predictions."""
    snaps = fleet_windows(n_agents, n_windows, tenant=tenant, seed=seed, stressed_frac=0.03, **kw)
    ex = FeatureExtractor()
    feats = fold(ex, [ex.window(s) for s in snaps], 10.0)
    items: list[tuple] = []
    for i, (s, (wf, vec)) in enumerate(zip(snaps, feats)):
        pred = {"tenant": tenant, "window_start": R.ms(s.window_start), "window_end": R.ms(s.window_end),
                "pane_index": 0, "probability": round(0.1 + 0.2 * i, 3), "horizon_s": 60.0,
                "history_windows": i, "feature_version": 1, "predictor": "onnx (test)"}
        items += [("snapshot", s), ("topology", (wf, vec)), ("prediction", pred)]
    return items


def write_all(sink: GraphSink, items: list[tuple]) -> list[bool]:
    out = []
    for kind, payload in items:
        if kind == "snapshot":
            out.append(sink.write_snapshot(payload))
        elif kind == "topology":
            out.append(sink.write_topology(*payload))
        else:
            out.append(sink.write_prediction(payload))
    return out


# -- constraints -------------------------------------------------------------------------
def test_constraints_apply_twice_and_are_enforced(server):
    with GraphSink(spec_for(server)) as sink:
        sink.apply_schema()
        sink.apply_schema()  # idempotent: IF NOT EXISTS
        names = {r["name"] for r in run(sink.driver, "SHOW CONSTRAINTS")}
        assert {"aura_tenant_id", "aura_agent_key", "aura_window_key", "aura_prediction_key"} <= names
        run(sink.driver, "CREATE (:Agent {key: 'dup/x'})")
        with pytest.raises(Exception, match="(?i)duplicat|unique|constraint"):
            run(sink.driver, "CREATE (:Agent {key: 'dup/x'})")


# -- idempotency -------------------------------------------------------------------------
@pytest.mark.parametrize("path", [{}, {"parallel": 2, "batch_size": 40}, {"row_path": True}],
                         ids=["columns", "columns-lanes", "rows"])
def test_replaying_the_same_stream_leaves_exactly_the_same_graph(server, path):
    tenant = f"idem-{len(path)}{'r' if path.get('row_path') else ''}"
    items = stream(tenant)
    with GraphSink(spec_for(server, **path)) as first:
        assert all(write_all(first, items))
        once = dump(first.driver, tenant)
        snap0 = items[0][1]
        c = counts(first.driver, tenant)
        assert c["Window"] == 4 and c["Prediction"] == 4 and c["Tenant"] == 1
        assert c["Agent"] == len(snap0.agents) and c["CALLS"] == len(snap0.edge_src)
        assert c["NEXT"] == 3 and c["FOR_WINDOW"] == 4 and c["HAS_WINDOW"] == 4
        assert 4 <= c["IMPLICATES"] <= 4 * 5
    # a restart (fresh change-detection state) redelivering everything, then a duplicate of each
    with GraphSink(spec_for(server, **path)) as second:
        assert all(write_all(second, items + items))
        assert dump(second.driver, tenant) == once


def test_arrival_order_does_not_change_the_graph(server):
    """Late, shuffled and redelivered batches (min/max and pane guards) give the graph of
    the in-order stream; change detection off so that every row is written in both."""
    with GraphSink(spec_for(server, epsilon=-1.0)) as sink:
        assert all(write_all(sink, stream("order-a")))
        in_order = dump(sink.driver, "order-a")
    shuffled = stream("order-b")
    random.Random(5).shuffle(shuffled)
    with GraphSink(spec_for(server, epsilon=-1.0)) as sink:
        assert all(write_all(sink, shuffled + shuffled[:4]))
        got = dump(sink.driver, "order-b")
    assert got == in_order


def delete_tenant(driver, tenant: str) -> None:
    run(driver, "MATCH (n) WHERE n.tenant = $t OR (n:Tenant AND n.id = $t) DETACH DELETE n", t=tenant)


def test_column_path_leaves_the_graph_the_row_path_leaves(server):
    """The same stream (refresh every 3 windows: touches) through the per-row path of issue 5
    and through the column path with lanes: the same graph. Synthetic unchanged values are
    exactly equal, so a touch (last_window only) and a full rewrite agree."""
    items = stream("paths-a", n_agents=200, n_windows=8, seed=7)
    got = []
    for path in ({"row_path": True}, {"parallel": 2, "batch_size": 60}):
        with GraphSink(spec_for(server, refresh_windows=3, **path)) as sink:
            assert all(write_all(sink, items))
            got.append(dump(sink.driver, "paths-a"))
            if not path.get("row_path"):
                assert sink.stats["agent_rows_touched"] and sink.stats["call_rows_touched"]
            delete_tenant(sink.driver, "paths-a")
    assert got[0] == got[1]


def test_readers_see_each_row_whole_while_a_window_is_written(server):
    """No long lock: reads complete while a window is being written (many transactions, two
    lanes), and every CALLS row and agent read holds the values of one window, never a mix."""
    import threading

    snaps = fleet_windows(2500, 2, tenant="rd-a", seed=4, change_frac=0.5)

    def truth(s):
        edges = {(s.agents[a], s.agents[b]): (int(c), int(e), R.ms(s.window_start))
                 for a, b, c, e in zip(s.edge_src, s.edge_dst, s.edge_count, s.edge_errors)}
        agents = {a: (float(x), R.ms(s.window_start)) for a, x in zip(s.agents, s.metrics[:, 3])}
        return edges, agents
    (old_e, old_a), (new_e, new_a) = truth(snaps[0]), truth(snaps[1])
    reads, bad, writing = [], [], threading.Event()
    stop = threading.Event()

    keys = [R.agent_key("rd-a", a) for a in snaps[0].agents[::10]]  # index lookups: short reads

    def reader(driver):
        while not stop.is_set():
            during = writing.is_set()
            edges = run(driver, "UNWIND $keys AS k MATCH (a:Agent {key: k})-[r:CALLS]->(b) RETURN a.id AS s, "
                        "b.id AS d, r.weight AS w, r.errors AS e, r.last_window AS lw", keys=keys)
            agents = run(driver, "UNWIND $keys AS k MATCH (a:Agent {key: k}) RETURN a.id AS id, "
                         "a.request_count AS rc, a.last_window AS lw", keys=keys)
            for r in edges:
                k, v = (r["s"], r["d"]), (r["w"], r["e"], r["lw"])
                if v not in (old_e[k], new_e[k]):
                    bad.append((k, v))
            for r in agents:
                if (r["rc"], r["lw"]) not in (old_a[r["id"]], new_a[r["id"]]):
                    bad.append((r["id"], r["rc"], r["lw"]))
            reads.append((during, writing.is_set(), len(agents)))

    with GraphSink(spec_for(server, epsilon=-1.0, batch_size=250, parallel=2)) as sink:
        assert sink.write_snapshot(snaps[0])
        t = threading.Thread(target=reader, args=(sink.driver,))
        t.start()
        writing.set()
        assert sink.write_snapshot(snaps[1])  # every row rewritten: epsilon < 0
        writing.clear()
        stop.set()
        t.join(60)
    assert not bad[:5]
    assert any(a and b for a, b, _ in reads), reads  # at least one read began and ended mid-write


def test_a_spilled_column_batch_replays_into_a_graph_that_lost_its_nodes(tmp_path, server):
    """Updates spill as MERGE (the spill file may meet a graph without the nodes: here the
    tenant is deleted before the replay); touches are dropped."""
    spill = str(tmp_path / "spill.ndjson")
    snaps = fleet_windows(120, 3, tenant="sp-a", seed=6)
    with GraphSink(spec_for(server, spill_path=spill, refresh_windows=1)) as sink:
        assert sink.write_snapshot(snaps[0]) and sink.write_snapshot(snaps[1])
        batch, _ = sink.snapshot_batch(snaps[2])
        names = [n for n, _ in batch.steps]
        assert {"agents_update", "agents_touch", "calls_update", "calls_touch"} <= set(names)
        sink._spill(batch, "test: not delivered")
        delete_tenant(sink.driver, "sp-a")
        assert sink.replay().delivered == 1
        updated = {k for n, p in batch.steps if n == "agents_update" for k in p["columns"]["key"]}
        rows = run(sink.driver, "MATCH (a:Agent {tenant: 'sp-a'}) RETURN a.key AS key, a.id AS id, "
                   "a.request_count AS rc, a.last_window AS lw")
    last = snaps[2]
    want = {R.agent_key("sp-a", a): float(x) for a, x in zip(last.agents, last.metrics[:, 3])}
    got = {r["key"]: r for r in rows}
    assert updated and updated <= set(got)
    for k in updated:
        assert got[k]["id"] == k.split("/", 1)[1] and got[k]["rc"] == want[k]
        assert got[k]["lw"] == R.ms(last.window_start)


# -- change detection --------------------------------------------------------------------
def test_change_detection_writes_fewer_rows_and_the_graph_stays_current(server):
    snaps = fleet_windows(400, 5, tenant="cd-a", seed=3, change_frac=0.05)
    n_edges, n_agents = len(snaps[0].edge_src), len(snaps[0].agents)
    with GraphSink(spec_for(server, refresh_windows=0)) as sink:
        for s in snaps:
            assert sink.write_snapshot(s)
        written = sink.stats["call_rows"]
        # the first window in full, then about 5% of the edges per window (+ the failing links)
        later = written - n_edges
        assert 0.02 * 4 * n_edges < later < 0.2 * 4 * n_edges
        assert sink.stats["call_rows_skipped"] == 5 * n_edges - written
        assert sink.stats["agent_rows"] < n_agents + 0.2 * 4 * n_agents
        graph = {(r["src"], r["dst"]): (r["w"], r["e"]) for r in run(
            sink.driver, "MATCH (a:Agent {tenant: 'cd-a'})-[r:CALLS]->(b) "
            "RETURN a.id AS src, b.id AS dst, r.weight AS w, r.errors AS e")}
    last = snaps[-1]
    truth = {(last.agents[a], last.agents[b]): (int(c), int(e))
             for a, b, c, e in zip(last.edge_src, last.edge_dst, last.edge_count, last.edge_errors)}
    assert graph == truth  # unchanged values are skipped, never lost
    with GraphSink(spec_for(server, epsilon=-1.0)) as full:  # no change detection: every row
        for s in fleet_windows(400, 5, tenant="cd-b", seed=3, change_frac=0.05):
            assert full.write_snapshot(s)
        assert full.stats["call_rows"] == 5 * n_edges
        assert written < 0.4 * full.stats["call_rows"]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), eps=st.sampled_from([0.0, 0.01, 0.1]), refresh=st.sampled_from([0, 1, 3]),
       order=st.sampled_from(["forward", "shuffled"]))
def test_change_detection_keeps_the_graph_within_epsilon_of_the_latest_window(seed, eps, refresh, order):
    """Simulated graph (the Cypher guard: a row is applied when its window is not older than
    the one held): after every window the graph is within epsilon of the newest values seen,
    the cache equals the graph, and with a refresh nothing is older than ``refresh`` slots."""
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(rng.randint(1, 8))]
    windows = list(range(0, 10_000 * rng.randint(2, 8), 10_000))
    if order == "shuffled":
        rng.shuffle(windows)
    cache: dict = {}
    graph: dict = {}  # key -> (values, last_window, first_window), as the Cypher guards apply rows
    newest: dict = {}
    for w in windows:
        rows = [{"key": k, "window": w, "v": rng.choice([1.0, 1.0, 1.001, 2.0, 50.0, 50.4, 0.0])}
                for k in keys if refresh or rng.random() < 0.9]  # with a refresh: keys in every window
        sel = select_changed(rows, cache, lambda r: r["key"], lambda r: (r["v"],), eps, 10_000, refresh)
        for r in sel:
            k = r["key"]
            vals, last, first = graph.get(k, (None, -1, w))
            if w >= last:
                vals, last = (r["v"],), w
            graph[k] = (vals, last, min(first, w))
        remember(rows, sel, cache, lambda r: r["key"], lambda r: (r["v"],))
        for r in rows:
            k = r["key"]
            first = min(w, newest[k][2]) if k in newest else w
            if k not in newest or w >= newest[k][1]:
                newest[k] = ((r["v"],), w, first)
            else:
                newest[k] = (*newest[k][:2], first)
        assert {k: (c[0], c[1]) for k, c in cache.items()} == {k: (g[0], g[1]) for k, g in graph.items()}
        for k, (vals, _, first) in newest.items():
            held = graph[k][0][0]
            assert abs(vals[0] - held) <= eps * max(1.0, abs(held)) + 1e-12
            assert graph[k][2] == first  # first window seen: exact, whatever the order
        if refresh and order == "forward":
            for r in rows:
                assert w - graph[r["key"]][1] < refresh * 10_000


def test_certificate_becomes_properties_without_a_migration(server):
    items = stream("qc-a", n_agents=60, n_windows=2)
    cert = {"view": 7, "block_hash": "ab" * 16, "signers": [0, 1, 3], "signatures": ["s0", "s1", "s3"],
            "extra": {"nested": True}}
    items[-1] = ("prediction", {**items[-1][1], "certificate": cert})
    with GraphSink(spec_for(server)) as sink:
        assert all(write_all(sink, items))
        rows = run(sink.driver, "MATCH (p:Prediction {tenant: 'qc-a'}) RETURN p.qc_view AS view, "
                   "p.qc_signers AS signers, p.qc_extra AS extra, p.certificate AS cert "
                   "ORDER BY p.window_start")
    assert rows[0] == {"view": None, "signers": None, "extra": None, "cert": None}
    assert rows[1]["view"] == 7 and rows[1]["signers"] == [0, 1, 3]
    assert json.loads(rows[1]["extra"]) == {"nested": True} and json.loads(rows[1]["cert"]) == cert


def test_prediction_status_is_written_and_a_later_pane_replaces_it_idempotently(server):
    from pipelines.graph import query

    items = stream("st-a", n_agents=60, n_windows=3)
    preds = [i for i, (kind, _) in enumerate(items) if kind == "prediction"]
    first = items[preds[0]][1]
    items[preds[0]] = ("prediction", {**first, "status": "calibrating"})
    items[preds[2]] = ("prediction", {**items[preds[2]][1], "status": "out_of_distribution"})
    # window 1's row has no status (a row from before statuses): "ok"
    start = [R.ms(items[i][1]["window_start"]) for i in preds]
    with GraphSink(spec_for(server)) as sink:
        assert all(write_all(sink, items))
        got = [query.prediction(sink.driver, "neo4j", "st-a", s)["prediction"]["status"] for s in start]
        assert got == ["calibrating", "ok", "out_of_distribution"]
        assert {r["status"] for r in query.at_risk(sink.driver, "neo4j", "st-a")} == {"out_of_distribution"}
        assert [r["status"] for r in query.timeline(sink.driver, "neo4j", "st-a")] == got
        once = dump(sink.driver, "st-a")
        assert all(write_all(sink, items))  # a replay changes nothing
        assert dump(sink.driver, "st-a") == once
        assert sink.write_prediction({**first, "pane_index": 1, "status": "ok"})  # a later pane
        assert sink.write_prediction({**first, "status": "calibrating"})  # the earlier one, redelivered
        assert query.prediction(sink.driver, "neo4j", "st-a", start[0])["prediction"]["status"] == "ok"


# -- failure: server killed, unreachable ---------------------------------------------------
def test_server_killed_mid_run_spills_and_replay_delivers_every_window_exactly_once(tmp_path, server):
    srv = EmbeddedGraphServer(str(tmp_path / "graph")).start()
    spill = str(tmp_path / "spill.ndjson")
    spec = spec_for(srv, epsilon=-1.0, spill_path=spill, retries=1, backoff_s=0.05, retry_time_s=0.5,
                    connect_timeout_s=1.0, cooldown_s=0.5)
    items = stream("kill-a", n_agents=80, n_windows=8, seed=2)
    per_window = [items[i:i + 3] for i in range(0, len(items), 3)]
    try:
        sink = GraphSink(spec).open()
        assert all(write_all(sink, [x for w in per_window[:3] for x in w]))
        srv.kill()  # SIGKILL mid-run
        assert srv.process.returncode == -9
        assert not any(write_all(sink, [x for w in per_window[3:6] for x in w]))
        assert pending_batches(spill) == 9 and sink.stats["spilled"] == 9
        assert "NOT written" in sink.report() and "aura sink replay" in sink.report()
        srv = EmbeddedGraphServer(srv.root, bolt_port=srv.bolt_port, http_port=srv.http_port).start()
        sink._down_until = 0.0  # the cool-off is wall time; do not wait for it
        assert all(write_all(sink, [x for w in per_window[6:] for x in w]))  # the same sink carries on
        report = sink.replay()
        assert (report.delivered, report.failed) == (9, 0)
        assert pending_batches(spill) == 0 and not os.path.exists(spill)
        assert sink.replay().delivered == 0  # nothing twice
        keys = run(sink.driver, "MATCH (w:Window {tenant: 'kill-a'}) RETURN w.key AS k")
        assert len(keys) == len({r["k"] for r in keys}) == 8
        c = counts(sink.driver, "kill-a")
        assert (c["Window"], c["Prediction"], c["FOR_WINDOW"], c["NEXT"]) == (8, 8, 8, 7)
        assert run(sink.driver, "MATCH (w:Window {tenant: 'kill-a'}) WHERE w.betti_0 IS NULL "
                   "OR w.n_agents IS NULL RETURN count(w) AS n")[0]["n"] == 0
        got = dump(sink.driver, "kill-a")
        sink.close()
    finally:
        srv.stop()
    with GraphSink(spec_for(server, epsilon=-1.0)) as clean:  # the same stream, never interrupted
        assert all(write_all(clean, stream("kill-b", n_agents=80, n_windows=8, seed=2)))
        assert dump(clean.driver, "kill-b") == got


def test_unreachable_server_spills_with_a_clear_report(tmp_path):
    spill = str(tmp_path / "spill.ndjson")
    spec = GraphSpec(f"bolt://127.0.0.1:{free_port()}", "neo4j", "x", spill_path=spill, retries=1,
                     backoff_s=0.01, retry_time_s=0.2, connect_timeout_s=0.5)
    items = stream("down-a", n_agents=30, n_windows=1)
    with GraphSink(spec) as sink:
        assert sink.errors and "schema" in sink.errors[0]  # open() does not fail the job
        assert write_all(sink, items) == [False, False, False]
        assert sink.stats["retries"] == 1  # the first batch retried; then the cool-off spills at once
        text = sink.report()
    assert "3 batch(es) NOT written" in text and spill in text and "aura sink replay" in text
    with open(spill) as fh:
        lines = [json.loads(x) for x in fh]
    assert [x["kind"] for x in lines] == ["snapshot", "topology", "prediction"]
    assert "ServiceUnavailable" in lines[0]["error"] or "connect" in lines[0]["error"].lower()
    with GraphSink(spec) as again:  # still down: a replay keeps every batch, loses none
        rep = again.replay()
    assert (rep.delivered, rep.failed) == (0, 3) and pending_batches(spill) == 3
    assert "still undelivered" in rep.render()
    with pytest.raises(GraphUnavailable, match="failed"):  # no spill file: an error, not a loss
        GraphSink(GraphSpec(spec.uri, retries=0, retry_time_s=0.2, connect_timeout_s=0.5)).deliver(
            GraphSink(spec).snapshot_batch(items[0][1])[0])


# -- Beam job and command line -------------------------------------------------------------
def _telemetry(tmp_path) -> str:
    out = str(tmp_path / "tel")
    assert cli.main(["simulate", "--agents", "30", "--duration", "40", "--seed", "4", "--tenant", "cli",
                     "--out", out]) == 0
    return out


def test_beam_job_writes_the_graph_and_a_second_run_changes_nothing(tmp_path, server):
    paths = expand_inputs(_telemetry(tmp_path))
    cfg_graph = spec_for(server, slide_ms=10_000)
    ex = FeatureExtractor()
    from pipelines.inference import PredictorSpec

    pred = PredictorSpec()
    s1 = job.run_batch(paths, WindowSpec(10.0), str(tmp_path / "r1"), ex, pred, cfg_graph)
    with GraphSink(spec_for(server)) as sink:
        once = dump(sink.driver, "cli")
        c = counts(sink.driver, "cli")
    assert s1.windows == 4 and s1.predictions == 4
    assert s1.graph["written.snapshot"] == 4 and s1.graph["written.topology"] == 4
    assert s1.graph["written.prediction"] == 4 and not any(k.startswith("spilled") for k in s1.graph)
    assert (c["Window"], c["Prediction"], c["NEXT"], c["Tenant"]) == (4, 4, 3, 1)
    assert c["IMPLICATES"] >= 1
    assert SinkState._REGISTRY == {}  # the run's change-detection state is released
    s2 = job.run_batch(paths, WindowSpec(10.0), str(tmp_path / "r2"), ex, pred, cfg_graph)
    assert s2.graph["written.snapshot"] == 4
    with GraphSink(spec_for(server)) as sink:
        assert dump(sink.driver, "cli") == once


def test_cli_query_prints_table_and_json(server, capsys, monkeypatch):
    with GraphSink(spec_for(server)) as sink:
        assert all(write_all(sink, stream("q-a", n_agents=60, n_windows=3)))
    target = ["--graph-uri", server.uri, "--graph-user", server.auth[0], "--graph-password", server.auth[1]]
    assert cli.main(["query", "at-risk", "--tenant", "q-a", "--json", *target]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["tenant"] for r in rows} == {"q-a"}
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["probability"] == 0.5 and rows[0]["window_start"] == R.ms(1_767_225_620.0)
    assert cli.main(["query", "timeline", "--tenant", "q-a", *target]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split()[:3] == ["window_start", "agents", "edges"] and len(text) == 2 + 3
    assert text[2].startswith("2026-01-01T00:00:00Z") and text[-1].split()[-1] == "0.5"
    assert cli.main(["query", "prediction", "--tenant", "q-a", "--window", str(R.ms(1_767_225_600.0)),
                     "--json", *target]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prediction"]["probability"] == 0.1 and doc["window"]["start"] == R.ms(1_767_225_600.0)
    # the window's failing links (synthetic seed 1): five agents, each on one stressed link
    assert [(x["agent"], x["rank"], x["involvement"]) for x in doc["implicated"]] == [
        ("a08", 1, 1.0), ("a15", 2, 1.0), ("a16", 3, 1.0), ("a20", 4, 1.0), ("a25", 5, 1.0)]
    assert cli.main(["query", "prediction", "--tenant", "q-a", *target]) == 0  # the latest, as tables
    text = capsys.readouterr().out
    assert "probability      0.5" in text and "implicated agents:" in text and "a16" in text
    assert cli.main(["query", "prediction", "--tenant", "nobody", *target]) == 1


def test_cli_run_against_an_unreachable_server_spills_and_replay_delivers(tmp_path, server, capsys):
    tel = _telemetry(tmp_path)
    out = str(tmp_path / "run")
    dead = f"bolt://127.0.0.1:{free_port()}"
    code = cli.main(["run", "--input", tel, "--mode", "batch", "--out", out, "--no-progress", "--no-predict",
                     "--graph-uri", dead, "--graph-user", "root", "--graph-password", "x"])
    err = capsys.readouterr().err
    assert code == 0
    assert "8 batch(es) could not be written" in err and "aura sink replay" in err
    with open(os.path.join(out, "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["graph"] == {"spilled.snapshot": 4, "spilled.topology": 4}
    target = ["--graph-uri", server.uri, "--graph-user", server.auth[0], "--graph-password", server.auth[1]]
    assert cli.main(["sink", "replay", "--out", out, *target]) == 0
    assert "replayed 8 batch(es)" in capsys.readouterr().out
    with GraphSink(spec_for(server)) as sink:
        c = counts(sink.driver, "cli")
        done = run(sink.driver, "MATCH (w:Window {tenant: 'cli'}) WHERE w.betti_0 IS NOT NULL "
                   "AND w.n_agents = 30 RETURN count(w) AS n")[0]["n"]
    assert c["Window"] == 4 and done == 4


def test_graph_settings_come_from_flags_then_environment(monkeypatch):
    from pipelines.config import load_run_config

    monkeypatch.setenv("NEO4J_URI", "neo4j://graph.prod:7687")
    monkeypatch.setenv("NEO4J_USERNAME", "aura")
    monkeypatch.setenv("NEO4J_PASSWORD", "s3cret")
    monkeypatch.delenv("NEO4J_USER", raising=False)
    monkeypatch.delenv("NEO4J_DATABASE", raising=False)
    cfg = load_run_config(None, input="x", graph_epsilon=0.1, window_slide_s=5.0)
    s = cfg.graph_settings().resolved()
    assert (s.uri, s.user, s.password, s.database) == ("neo4j://graph.prod:7687", "aura", "s3cret", "neo4j")
    assert (s.epsilon, s.slide_ms, s.top_k) == (0.1, 5000, 5)
    cfg = load_run_config(None, input="x", graph_uri="bolt://other:1", graph_user="u")
    s = cfg.graph_settings().resolved()
    assert (s.uri, s.user, s.password) == ("bolt://other:1", "u", "s3cret")
    monkeypatch.delenv("NEO4J_URI")
    assert load_run_config(None, input="x").graph_settings().resolved().uri is None  # embedded
    assert load_run_config(None, input="x", graph=False).graph_settings() is None
    with pytest.raises(ValueError, match="graph_batch_size"):
        load_run_config(None, input="x", graph_batch_size=0)
