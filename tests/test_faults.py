"""Fault injection below the process (issue 19, item 4), against real components: the
embedded Bolt graph server (ArcadeDB) and a real tritonserver.

Every fault must end in a clear error or a spill with the reason and a way to recover,
within a bounded time that the test measures and prints - never a silent drop, never a hang.

- a "graph server" that accepts TCP connections and never answers (a socket server here);
- a real graph server frozen mid-run (SIGSTOP: the kernel still accepts and ACKs, the
  process answers nothing - the driver has no read timeout on an open connection);
- a graph server stopped (SIGTERM) or killed (SIGKILL) while a batch is being written;
- a tritonserver whose model raises, that lacks the model, that is frozen, that is killed;
- a prediction error inside the Beam job.

A slow disk for the spill file is not faked: without FUSE or dm-delay there is no honest
way to slow one down here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from pipelines import cli
from pipelines.graph import rows as R
from pipelines.graph import sink as sink_module
from pipelines.graph.server import EmbeddedGraphServer
from pipelines.graph.sink import GraphSink, GraphSpec, pending_batches
from pipelines.graph.target import spill_path
from pipelines.inference import OnnxPredictor, PredictorSpec, TritonError, TritonPredictor
from pipelines.triton_server import MODEL_NAME, ROOT, TritonServer
from tests.test_graph_sink import counts, dump, run, stream, write_all


def _elapsed(t0: float) -> float:
    return time.monotonic() - t0


def _spilled(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(x) for x in fh if x.strip()]


def _target(srv: EmbeddedGraphServer) -> list[str]:
    return ["--graph-uri", srv.uri, "--graph-user", srv.auth[0], "--graph-password", srv.auth[1]]


class SilentServer:
    """Accepts TCP connections on loopback and reads what comes, but never writes a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for c in self._conns:
            c.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- graph: a server that accepts and never answers ---------------------------------------
def test_silent_graph_server_spills_within_the_bound_and_replay_delivers(tmp_path):
    """Before: 5.5 s in open() and 23.5 s per batch (handshake deadline x 4 attempts), no
    overall bound. Now: at most ``give_up_s`` per call; the spill reason names the timeout;
    ``aura sink replay`` delivers everything once a real server is there."""
    out = str(tmp_path / "run")
    give_up = 4.0
    items = stream("silent", n_agents=40, n_windows=2)
    with SilentServer() as silent:
        spec = GraphSpec(silent.uri, "root", "x", spill_path=spill_path(out), connect_timeout_s=1.0,
                         stall_timeout_s=2.0, give_up_s=give_up, backoff_s=0.2, cooldown_s=60.0)
        t0 = time.monotonic()
        sink = GraphSink(spec).open()
        t_open = _elapsed(t0)
        t1 = time.monotonic()
        ok = write_all(sink, items[:1])
        t_first = _elapsed(t1)
        t2 = time.monotonic()
        ok += write_all(sink, items[1:])  # cooling off: straight to the spill file
        t_rest = _elapsed(t2)
        sink.close()
        assert silent.accepted >= 2  # the driver really connected, and got nothing back
    print(f"\nsilent graph server: open {t_open:.2f} s, first batch spilled after {t_first:.2f} s, "
          f"{len(items) - 1} more in {t_rest:.3f} s (give_up_s={give_up})")
    assert ok == [False] * len(items)
    assert t_open < give_up + 1.0 and t_first < give_up + 1.0 and t_rest < 1.0
    assert sink.errors[0].startswith("schema: GraphTimeout: timeout: " + silent.uri), sink.errors[0]
    lines = _spilled(spill_path(out))
    assert [x["kind"] for x in lines] == [k for k, _ in items] and pending_batches(spill_path(out)) == 6
    assert all("timeout" in x["error"] for x in lines), lines[0]["error"]
    assert silent.uri in lines[0]["error"] and "gave up after" in lines[0]["error"]
    assert "cooling off" in lines[1]["error"] and "timeout" in lines[1]["error"]
    assert "NOT written" in sink.report() and "aura sink replay" in sink.report()

    srv = EmbeddedGraphServer(str(tmp_path / "graph")).start()
    try:
        t3 = time.monotonic()
        assert cli.main(["sink", "replay", "--out", out, *_target(srv)]) == 0
        print(f"replay to a real server: {_elapsed(t3):.2f} s")
        assert pending_batches(spill_path(out)) == 0
        with GraphSink(GraphSpec(srv.uri, *srv.auth)) as check:
            c = counts(check.driver, "silent")
            assert (c["Window"], c["Prediction"], c["NEXT"]) == (2, 2, 1)
            assert run(check.driver, "MATCH (w:Window {tenant: 'silent'}) WHERE w.betti_0 IS NULL "
                       "RETURN count(w) AS n")[0]["n"] == 0
    finally:
        assert srv.stop() == 0


# -- graph: a real server frozen mid-run -------------------------------------------------
def test_frozen_graph_server_mid_run_is_abandoned_within_the_stall_timeout(tmp_path):
    """SIGSTOP the server between windows: the sink's pooled connection waits for an answer
    that never comes. Before: the write blocked for good (measured: still blocked after 90 s).
    Now: abandoned after ``stall_timeout_s``, spilled with the reason, and after SIGCONT the
    same sink carries on and replay gives the graph of an uninterrupted run."""
    srv = EmbeddedGraphServer(str(tmp_path / "graph")).start()
    spill = str(tmp_path / "spill.ndjson")
    spec = GraphSpec(srv.uri, *srv.auth, epsilon=-1.0, spill_path=spill, connect_timeout_s=1.0,
                     stall_timeout_s=2.0, give_up_s=4.0, backoff_s=0.2, cooldown_s=60.0)
    items = stream("frozen-a", n_agents=60, n_windows=4, seed=3)
    frozen = False
    try:
        sink = GraphSink(spec).open()
        assert all(write_all(sink, items[:3]))  # window 1; the connection stays in the pool
        os.kill(srv.process.pid, signal.SIGSTOP)
        frozen = True
        t0 = time.monotonic()
        assert write_all(sink, items[3:4]) == [False]
        t_first = _elapsed(t0)
        assert write_all(sink, items[4:9]) == [False] * 5  # cooling off
        t_all = _elapsed(t0)
        os.kill(srv.process.pid, signal.SIGCONT)
        frozen = False
        print(f"\nfrozen graph server: first batch spilled after {t_first:.2f} s, 6 batches in {t_all:.2f} s "
              f"(stall_timeout_s=2, give_up_s=4); timeouts={sink.stats['timeouts']}")
        assert t_first < spec.give_up_s + 1.0 and t_all < spec.give_up_s + 1.5
        assert sink.stats["timeouts"] >= 1
        first = _spilled(spill)[0]["error"]
        assert first.startswith("GraphTimeout: timeout: " + srv.uri) and "did not answer" in first, first
        sink._down_until = 0.0  # the cool-off is wall time; do not wait for it
        assert all(write_all(sink, items[9:]))  # the same sink carries on (a fresh connection)
        report = sink.replay()
        assert (report.delivered, report.failed) == (6, 0) and pending_batches(spill) == 0
        got = dump(sink.driver, "frozen-a")
        with GraphSink(GraphSpec(srv.uri, *srv.auth, epsilon=-1.0)) as clean:
            assert all(write_all(clean, stream("frozen-b", n_agents=60, n_windows=4, seed=3)))
            assert dump(clean.driver, "frozen-b") == got
        sink.close()
    finally:
        if frozen:
            os.kill(srv.process.pid, signal.SIGCONT)
        srv.stop()


# -- graph: the server dies while a batch is being written -------------------------------
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_graph_server_dying_mid_batch_spills_and_replay_gives_the_same_graph(tmp_path, monkeypatch, how):
    """The server goes away inside a multi-transaction batch (three of its transactions
    committed, the fourth open): the batch spills whole with the reason, within
    ``give_up_s``; replay to the restarted server re-MERGEs the committed part and the graph
    equals an uninterrupted run's. A clean shutdown (SIGTERM) may still let the open
    transaction, or the whole batch, through: either way nothing is lost. The SIGTERMed
    server exits cleanly at once although the sink still holds a connection (before: it
    waited for the client to hang up, until ``stop`` SIGKILLed it after 30 s)."""
    srv = EmbeddedGraphServer(str(tmp_path / "graph")).start()
    spill = str(tmp_path / "spill.ndjson")
    spec = GraphSpec(srv.uri, *srv.auth, epsilon=-1.0, batch_size=60, spill_path=spill, retries=2,
                     backoff_s=0.1, retry_time_s=0.5, connect_timeout_s=1.0, stall_timeout_s=5.0,
                     give_up_s=5.0, cooldown_s=60.0)
    items = stream("dies-a", n_agents=200, n_windows=3, seed=5)
    real_run_steps = sink_module._run_steps
    calls = {"n": 0, "stopped_at": 0.0}

    def run_steps(tx, group):  # the server goes away inside the 4th transaction of the batch
        calls["n"] += 1
        if calls["n"] == 4:
            calls["stopped_at"] = time.monotonic()
            if how == "sigterm":  # a clean shutdown starts while the transaction is open
                srv.process.send_signal(signal.SIGTERM)
            else:
                srv.kill()
        return real_run_steps(tx, group)

    try:
        sink = GraphSink(spec).open()
        assert all(write_all(sink, items[:3]))  # window 1
        monkeypatch.setattr(sink_module, "_run_steps", run_steps)
        t0 = time.monotonic()
        first = write_all(sink, items[3:4])  # window 2's snapshot: the server dies mid-batch
        t_batch = _elapsed(t0)
        monkeypatch.setattr(sink_module, "_run_steps", real_run_steps)
        t_stop = time.monotonic()
        code = srv.stop()
        t_stop = _elapsed(t_stop)
        rest = write_all(sink, items[4:])
        outcome = "written" if first[0] else "spilled"
        print(f"\nserver {how} in the 4th transaction of a batch: batch {outcome} "
              f"{t0 + t_batch - calls['stopped_at']:.2f} s after the signal ({t_batch:.2f} s in all); "
              f"server exit {code} after {t_stop:.2f} s more")
        assert calls["n"] >= 4 and t_batch < spec.give_up_s + 1.0
        assert code == (0 if how == "sigterm" else -9)
        assert t_stop < 10  # before: a SIGTERMed server waited for the sink's open connection, 30 s
        assert rest == [False] * 5
        if how == "sigkill":
            assert first == [False]
        spilled = _spilled(spill)
        assert len(spilled) == first.count(False) + 5 == pending_batches(spill)
        reason = spilled[0]["error"]
        print(f"spill reason: {reason[:160]}")
        assert "gave up after" in reason or "cooling off" in reason, reason
        if how == "sigkill":
            assert "ServiceUnavailable" in reason or "SessionExpired" in reason, reason

        srv = EmbeddedGraphServer(srv.root, bolt_port=srv.bolt_port, http_port=srv.http_port).start()
        partial = run(sink.driver, "MATCH (a:Agent {tenant: 'dies-a'}) WHERE a.last_window = $w "
                      "RETURN count(a) AS n", w=R.ms(items[3][1].window_start))[0]["n"]
        if how == "sigkill":
            assert partial == 180  # 3 transactions of 60 agent rows committed before the kill
        else:
            assert partial >= 180
        sink._down_until = 0.0
        report = sink.replay()
        assert (report.delivered, report.failed) == (len(spilled), 0) and pending_batches(spill) == 0
        got = dump(sink.driver, "dies-a")
        c = counts(sink.driver, "dies-a")
        assert (c["Window"], c["Prediction"], c["NEXT"]) == (3, 3, 2)
        sink.close()
        with GraphSink(GraphSpec(srv.uri, *srv.auth, epsilon=-1.0)) as clean:
            assert all(write_all(clean, stream("dies-b", n_agents=200, n_windows=3, seed=5)))
            assert dump(clean.driver, "dies-b") == got
    finally:
        srv.stop()


# -- Triton -------------------------------------------------------------------------------
FAULTY_MODEL = '''

# fault injection (tests/test_faults.py): a file FAIL beside this model makes it raise
_Real = TritonPythonModel


class TritonPythonModel(_Real):
    def execute(self, requests):
        if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "FAIL")):
            raise RuntimeError("injected model failure")
        return super().execute(requests)
'''


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """A real tritonserver serving the committed model through a model.py that raises
    while a FAIL file sits beside it."""
    work = tmp_path_factory.mktemp("triton-faults")
    model_py = work / "faulty_model.py"
    with open(os.path.join(ROOT, "triton_repo", "local", "model.py")) as fh:
        model_py.write_text(fh.read() + FAULTY_MODEL)
    srv = TritonServer(str(work), model_py=str(model_py)).start()
    srv.fail_flag = os.path.join(str(work), "repo", MODEL_NAME, "1", "FAIL")
    yield srv
    if srv.process.poll() is None:
        os.kill(srv.process.pid, signal.SIGCONT)
    srv.stop()


def _inputs(n: int = 2):
    info = OnnxPredictor().info
    rng = np.random.default_rng(n)
    return (rng.standard_normal((n, info.seq_len, info.n_features)).astype(np.float32),
            rng.uniform(0, 30, (n, info.seq_len)).astype(np.float32))


def _url(srv: TritonServer, protocol: str) -> str:
    return f"127.0.0.1:{srv.grpc_port if protocol == 'grpc' else srv.http_port}"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_model_that_raises_is_a_clear_error_at_once(triton, protocol):
    """Before: the raw InferenceServerException (no server, no model name), retried 3 times.
    Now: TritonError naming server URL, model and Triton's error; not retried (it would
    fail again); the same predictor answers again once the model is healthy."""
    x, dt = _inputs()
    p = TritonPredictor(_url(triton, protocol), protocol)
    expected = OnnxPredictor().run_inference(x, dt)
    np.testing.assert_array_equal(p.run_inference(x, dt), expected)
    open(triton.fail_flag, "w").close()
    try:
        t0 = time.monotonic()
        with pytest.raises(TritonError) as info:
            p.run_inference(x, dt)
        took = _elapsed(t0)
    finally:
        os.remove(triton.fail_flag)
    err = info.value
    print(f"\n{protocol}: model raised -> {took * 1000:.0f} ms: {err}")
    assert _url(triton, protocol) in str(err) and "'cascade_cfc'" in str(err)
    assert "injected model failure" in str(err) and "inference failed" in str(err)
    assert err.attempts == 1 and not err.transient and took < 1.0
    assert err.status == ("StatusCode.INTERNAL" if protocol == "grpc" else "500")
    np.testing.assert_array_equal(p.run_inference(x, dt), expected)
    p.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_without_the_model_is_a_clear_error(triton, protocol):
    x, dt = _inputs()
    p = TritonPredictor(_url(triton, protocol), protocol, model_name="no_such_model")
    with pytest.raises(LookupError, match="no ready model 'no_such_model'"):
        p.load_model()
    t0 = time.monotonic()
    with pytest.raises(TritonError) as info:  # asked without load_model: the call says it too
        p.run_inference(x, dt)
    took = _elapsed(t0)
    print(f"\n{protocol}: unknown model -> {took * 1000:.0f} ms: {info.value}")
    assert _url(triton, protocol) in str(info.value) and "'no_such_model'" in str(info.value)
    assert "no_such_model" in str(info.value).split(": ", 2)[-1]  # Triton's own words name it too
    assert info.value.attempts == 1 and took < 1.0
    p.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_frozen_triton_server_times_out_within_the_bound(triton, protocol):
    """SIGSTOP the server: it accepts and answers nothing. Each call gives up within
    ``give_up_s`` (before: 4 attempts x ``timeout_s`` + backoff, and ``load_model`` over
    gRPC waited 20 s, the channel's own connect timeout); after SIGCONT the same predictor
    answers again."""
    x, dt = _inputs()
    p = TritonPredictor(_url(triton, protocol), protocol, timeout_s=1.0, give_up_s=2.5)
    p.load_model()
    os.kill(triton.process.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(TritonError) as info:
            p.run_inference(x, dt)
        took = _elapsed(t0)
        fresh = TritonPredictor(_url(triton, protocol), protocol, timeout_s=1.0)
        t1 = time.monotonic()
        with pytest.raises(ConnectionError, match=f"{_url(triton, protocol)}"):
            fresh.load_model()
        took_load = _elapsed(t1)
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    err = info.value
    print(f"\n{protocol}: frozen server -> infer {took:.2f} s ({err.attempts} attempts), "
          f"load_model {took_load:.2f} s: {err}")
    assert "no answer within 1 s (timeout_s)" in str(err) and _url(triton, protocol) in str(err)
    assert err.transient and 1 <= err.attempts <= 2 and took < 2.5 + 0.5 and took_load < 1.0 + 0.5
    np.testing.assert_array_equal(p.run_inference(x, dt), OnnxPredictor().run_inference(x, dt))
    p.close()


def test_a_prediction_error_fails_the_beam_job_loudly_in_bounded_time(triton, tmp_path):
    """What the Beam prediction stage does with a predictor exception (read, not changed
    here): nothing - it propagates, and the whole batch job fails with the Triton error
    (no window is dead-lettered). Loud and bounded, not silent and not a hang."""
    from pipelines.beam import job
    from pipelines.topology.features import FeatureExtractor
    from pipelines.windowing import WindowSpec
    from tests.test_beam_job import mixed_files

    paths, _, _ = mixed_files(tmp_path, n_files=2, seed=11)
    spec = PredictorSpec("triton", triton_url=_url(triton, "grpc"), triton_protocol="grpc")
    open(triton.fail_flag, "w").close()
    try:
        t0 = time.monotonic()
        with pytest.raises(Exception) as info:
            job.run_batch(paths, WindowSpec(), str(tmp_path / "out"), FeatureExtractor(), spec)
        took = _elapsed(t0)
    finally:
        os.remove(triton.fail_flag)
    text = str(info.value)
    print(f"\nbeam batch job, model raising: failed after {took:.2f} s with {type(info.value).__name__}: "
          f"{text[:200]}")
    assert "TritonError" in text and "injected model failure" in text and _url(triton, "grpc") in text
    assert took < 60


def test_triton_killed_mid_run_is_a_clear_error_and_the_predictor_recovers(triton):
    """SIGKILL the server between calls: the next call fails at once, naming the server;
    once it is back on the same ports the same predictor object answers again (it reconnects
    rather than waiting out gRPC's reconnect backoff)."""
    x, dt = _inputs()
    expected = OnnxPredictor().run_inference(x, dt)
    preds = {pr: TritonPredictor(_url(triton, pr), pr) for pr in ("grpc", "http")}
    for p in preds.values():
        np.testing.assert_array_equal(p.run_inference(x, dt), expected)
    triton.kill()
    for pr, p in preds.items():
        t0 = time.monotonic()
        with pytest.raises(TritonError) as info:
            p.run_inference(x, dt)
        took = _elapsed(t0)
        print(f"\n{pr}: killed server -> {took:.2f} s ({info.value.attempts} attempts): {info.value}")
        assert "unreachable" in str(info.value) and _url(triton, pr) in str(info.value)
        assert info.value.transient and info.value.attempts == 4 and took < 2.0
    t0 = time.monotonic()
    triton.start()  # the same ports
    for p in preds.values():
        np.testing.assert_array_equal(p.run_inference(x, dt), expected)
        p.close()
    print(f"restarted and answering again after {_elapsed(t0):.2f} s")
