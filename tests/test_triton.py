"""A real tritonserver on loopback (nvidia-pytriton's binary, python backend running the
committed ONNX file) against the in-process predictor."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import orjson
import pytest

from pipelines.inference import OnnxPredictor, TritonPredictor
from pipelines.triton_server import MODEL_NAME, TritonServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = TritonServer(str(tmp_path_factory.mktemp("triton"))).start()
    yield srv
    assert srv.stop() == 0  # SIGTERM: a clean exit


def batch(n: int, seed: int = 0):
    info = OnnxPredictor().info
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, info.seq_len, info.n_features)).astype(np.float32)
    dt = rng.uniform(0, 30, (n, info.seq_len)).astype(np.float32)
    return x, dt


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_answers_exactly_like_onnxruntime_in_process(server, protocol):
    port = server.grpc_port if protocol == "grpc" else server.http_port
    remote = TritonPredictor(f"127.0.0.1:{port}", protocol)
    local = OnnxPredictor()
    for n in (1, 64, 300):
        x, dt = batch(n, seed=n)
        np.testing.assert_array_equal(remote.run_inference(x, dt), local.run_inference(x, dt))
    assert protocol in remote.describe()


def test_dynamic_batching_merges_concurrent_requests(server):
    def stats():
        url = f"http://127.0.0.1:{server.http_port}/v2/models/{MODEL_NAME}/stats"
        with urllib.request.urlopen(url, timeout=5) as r:
            s = orjson.loads(r.read())["model_stats"][0]
        return s["inference_count"], s["execution_count"]

    before = stats()
    x, dt = batch(1)
    errors = []

    def client():
        try:
            p = TritonPredictor(f"127.0.0.1:{server.grpc_port}", "grpc")
            for _ in range(20):
                p.run_inference(x, dt)
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    after = stats()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 160
    assert executions < inferences  # several requests shared one model execution


def test_missing_server_or_model_is_a_clear_error(server):
    with pytest.raises(ConnectionError, match="no Triton server"):
        TritonPredictor(f"127.0.0.1:{free_port()}", "http", timeout_s=1.0).load_model()
    with pytest.raises(LookupError, match="no ready model"):
        TritonPredictor(f"127.0.0.1:{server.grpc_port}", "grpc", model_name="nope").load_model()
    with pytest.raises(ValueError, match="protocol"):
        TritonPredictor("127.0.0.1:1", "smtp")


def test_the_pipeline_predicts_through_triton_as_in_process(server, tmp_path):
    from pipelines.beam import job
    from pipelines.inference import PredictorSpec
    from pipelines.predictions import read_predictions
    from pipelines.topology.features import FeatureExtractor
    from pipelines.windowing import WindowSpec
    from tests.test_beam_job import mixed_files

    paths, _, _ = mixed_files(tmp_path, n_files=2, seed=11)
    spec, fx = WindowSpec(), FeatureExtractor()
    remote = PredictorSpec("triton", triton_url=f"127.0.0.1:{server.grpc_port}", triton_protocol="grpc")
    a = job.run_batch(paths, spec, str(tmp_path / "onnx"), fx, PredictorSpec())
    b = job.run_batch(paths, spec, str(tmp_path / "triton"), fx, remote)
    assert a.predictions == b.predictions > 0

    def probs(d):
        rows = read_predictions(str(tmp_path / d)).to_pylist()
        return {(r["tenant"], r["window_start"]): r["probability"] for r in rows}

    assert probs("onnx") == probs("triton")
    assert "Triton grpc" in read_predictions(str(tmp_path / "triton")).column("predictor")[0].as_py()


def test_aura_serve_runs_until_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    http = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--workdir", str(tmp_path),
                             "--http-port", str(http), "--grpc-port", str(free_port())],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        line = proc.stdout.readline()
        assert "serving cascade_cfc" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{MODEL_NAME}/ready", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped (exit 0)" in out
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/live", timeout=2)


def test_validators_backed_by_triton_commit_what_in_process_validators_commit(server, tmp_path):
    """The consensus stage with two validators recomputing through the tritonserver (gRPC
    and HTTP) and two in process: every honest verdict commits with a verified audit log,
    and a broken proposal is objected to by all four - the remote backends among them."""
    from pipelines.consensus.audit import verify_log
    from pipelines.consensus.cluster import make_requests
    from pipelines.consensus.stage import ConsensusConfig, ConsensusStage

    local = OnnxPredictor()
    remote = [TritonPredictor(f"127.0.0.1:{server.grpc_port}", "grpc"),
              TritonPredictor(f"127.0.0.1:{server.http_port}", "http")]
    reqs = make_requests(120, local, t=local.info.seq_len, n_features=local.info.n_features, wrong={7})
    log = str(tmp_path / "audit.ndjson")
    stage = ConsensusStage([local, *remote, local], ConsensusConfig(max_block=32), audit_path=log)
    committed, disputed = stage.process(reqs)
    stage.close()
    for p in remote:
        p.close()
    assert remote[1].run_inference(*batch(2)).shape == (2,)  # closed: the next call reconnects
    remote[1].close()
    assert len(committed) == 119 and [d.verdict.vid for d in disputed] == [reqs[7].vid]
    objectors = {o["validator"] for o in disputed[0].objections}
    assert disputed[0].reason == "objected" and objectors == {0, 1, 2, 3}
    assert all(len(c.certificate["signers"]) >= 3 for c in committed)
    report = verify_log(log)
    assert report.ok and report.verdicts == 119, report.error


def test_triton_serves_another_model_directory_with_its_own_shapes(tmp_path):
    """Found by the chaos run: the model repository's config said [8, 71] whatever model it
    served, so serving the 65-feature v1 model failed every request."""
    from pathlib import Path

    v1 = str(Path(__file__).resolve().parents[1] / "models" / "cascade_cfc_v1")
    local = OnnxPredictor(v1)
    with TritonServer(str(tmp_path / "t"), model_dir=v1) as srv:
        remote = TritonPredictor(f"127.0.0.1:{srv.grpc_port}", "grpc", model_dir=v1)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((16, local.info.seq_len, local.info.n_features)).astype(np.float32)
        dt = rng.uniform(0, 30, (16, local.info.seq_len)).astype(np.float32)
        np.testing.assert_array_equal(remote.run_inference(x, dt), local.run_inference(x, dt))


def test_preparing_over_a_running_stub_replaces_it(tmp_path):
    """Found by CI: a killed tritonserver leaves its python-backend stub running for a moment, and
    restarting on the same workdir wrote into the busy executable (ETXTBSY). The backend files are
    now replaced by rename, so the running stub keeps its old inode."""
    import shutil
    import subprocess
    from pathlib import Path

    server = TritonServer(str(tmp_path))
    server.prepare()
    stub = tmp_path / "backends" / "python" / "triton_python_backend_stub"
    shutil.copy2(shutil.which("sleep"), stub)  # a running executable at the stub's path
    running = subprocess.Popen([str(stub), "30"])
    try:
        server.prepare()
        assert stub.read_bytes() != Path(shutil.which("sleep")).read_bytes()
        assert running.poll() is None
    finally:
        running.kill()
        running.wait()
