"""The service's HTTP surface (handlers only, no children): ingestion honesty and the reads,
the reads over outputs of the real streaming job."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipelines.cli import main
from pipelines.config import ApiConfig, load_run_config
from pipelines.service.app import create_app
from pipelines.service.spool import tenant_of
from tests.conftest import T0
from tests.otlp_payloads import fleet_request

PB = {"Content-Type": "application/x-protobuf"}


def _client(tmp_path, **api) -> TestClient:
    cfg = ApiConfig(data_dir=str(tmp_path / "svc"), **api).validate()
    run = load_run_config(None, landing=os.path.join(cfg.data_dir, "landing"),
                          out=os.path.join(cfg.data_dir, "run"), graph=False)
    return TestClient(create_app(cfg, run, start_runtime=False))


def _spooled(tmp_path) -> list[str]:
    d = tmp_path / "svc" / "spool"
    return sorted(str(d / n) for n in os.listdir(d) if n.endswith(".pb"))


def _otlp_json(body: bytes) -> bytes:
    """OTLP/JSON as the spec writes it: ids as hex strings, not protobuf JSON's base64."""
    import base64

    doc = MessageToDict(ExportTraceServiceRequest.FromString(body))
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64decode(s[k]).hex()
    return json.dumps(doc).encode()


def test_traces_are_on_disk_before_the_answer_in_every_encoding(tmp_path):
    c = _client(tmp_path)
    body = fleet_request(64, T0, seed=1)
    r = c.post("/v1/traces", content=body, headers={**PB, "X-Aura-Tenant": "acme"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    (first,) = _spooled(tmp_path)
    assert Path(first).read_bytes() == body and tenant_of(first) == "acme"
    r = c.post("/v1/traces", content=gzip.compress(body), headers={**PB, "Content-Encoding": "gzip"})
    assert r.status_code == 200
    r = c.post("/v1/traces", content=_otlp_json(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {}
    files = _spooled(tmp_path)
    assert len(files) == 3
    # gzip and JSON are spooled as the same protobuf message, ids intact
    msgs = [ExportTraceServiceRequest.FromString(Path(p).read_bytes()) for p in files]
    assert msgs[1] == msgs[0] == msgs[2]
    assert [tenant_of(p) for p in files] == ["acme", "default", "default"]
    metrics = c.get("/metrics").text
    assert 'aura_spans_received_total{tenant="acme"} 64.0' in metrics
    assert 'aura_ingest_requests_total{code="200",route="traces"} 3.0' in metrics


def test_bad_requests_get_the_reason_and_their_bytes_are_kept(tmp_path):
    c = _client(tmp_path, max_body_bytes=4096)
    cases = [
        (b"\x0a\xff\xff\xff", PB, 400, "bad_protobuf"),
        (b"{not json", {"Content-Type": "application/json"}, 400, "bad_json"),
        (b"\x1f\x8b\x08garbage", {**PB, "Content-Encoding": "gzip"}, 400, "bad_gzip"),
        (b"x", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b"\0" * 5000, PB, 413, "too_large"),
        (gzip.compress(b"\0" * 100_000), {**PB, "Content-Encoding": "gzip"}, 413, "too_large"),
        (fleet_request(4, T0), {**PB, "X-Aura-Tenant": "no tenant!"}, 400, "invalid_tenant"),
    ]
    for body, headers, status, reason in cases:
        r = c.post("/v1/traces", content=body, headers=headers)
        assert (r.status_code, r.json()["error"]) == (status, reason), (reason, r.text)
        assert r.json()["detail"]
    assert _spooled(tmp_path) == []
    dead_dir = tmp_path / "svc" / "ingest" / "deadletter"
    dead = [json.loads((dead_dir / n).read_text()) for n in sorted(os.listdir(dead_dir))]
    assert sorted(d["reason"] for d in dead) == sorted(c[3] for c in cases if c[2] == 400)
    assert any(d.get("raw_base64") or d.get("raw") for d in dead)


def test_a_full_spool_answers_429_with_retry_after(tmp_path):
    c = _client(tmp_path, max_backlog_files=2, retry_after_s=3)
    body = fleet_request(8, T0)
    codes = []
    for _ in range(4):
        r = c.post("/v1/traces", content=body, headers=PB)
        codes.append(r.status_code)
        c.app.state.aura.spool._backlog = (0.0, 0)  # recount now, not after the cache interval
    assert codes == [200, 200, 429, 429]
    assert r.headers["Retry-After"] == "3" and r.json()["error"] == "backlog_full"
    assert len(_spooled(tmp_path)) == 2


def test_native_telemetry_lands_for_the_job(tmp_path):
    c = _client(tmp_path)
    lines = b'{"a": 1}\n{"b": 2}\n'
    r = c.post("/v1/telemetry", content=lines, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["lines"] == 2
    assert Path(r.json()["file"]).read_bytes() == lines
    assert os.path.dirname(r.json()["file"]) == str(tmp_path / "svc" / "landing")
    r = c.post("/v1/telemetry", content=gzip.compress(lines[:-1]), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 202 and Path(r.json()["file"]).read_bytes() == lines  # newline added
    assert c.post("/v1/telemetry", content=b"  \n").json()["error"] == "empty_body"


@pytest.fixture(scope="module")
def job_outputs(tmp_path_factory):
    """A real streaming run (with consensus) over a small simulated fleet, as the service's run/."""
    root = tmp_path_factory.mktemp("svc-reads")
    tele = root / "tele"
    assert main(["simulate", "--agents", "30", "--duration", "120", "--seed", "5", "--tenant", "acme",
                 "--out", str(tele)]) == 0
    assert main(["run", "--input", str(tele), "--out", str(root / "svc" / "run"), "--no-progress",
                 "--no-graph"]) == 0
    return root


def test_reads_over_the_jobs_outputs(job_outputs):
    cfg = ApiConfig(data_dir=str(job_outputs / "svc")).validate()
    svc = job_outputs / "svc"
    run = load_run_config(None, landing=str(svc / "landing"), out=str(svc / "run"), graph=False)
    c = TestClient(create_app(cfg, run, start_runtime=False))
    r = c.get("/v1/tenants/acme/risk")
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["committed"] and v["certificate"]["signers"] and 0 <= v["probability"] <= 1
    assert v["band"] in ("low", "elevated", "high")
    w = c.get("/v1/tenants/acme/windows").json()["windows"]
    assert len(w) == 12 and w[-1]["window_start_ms"] == v["window_start_ms"]
    assert all(x["agents"] == 30 and x["committed"] for x in w)
    part = c.get("/v1/tenants/acme/windows", params={"from": w[2]["window_start_ms"],
                                                     "to": w[5]["window_start_ms"]}).json()["windows"]
    assert [x["window_start_ms"] for x in part] == [x["window_start_ms"] for x in w[2:5]]
    iso = c.get("/v1/tenants/acme/windows", params={"from": "1970-01-01T00:00:00Z", "limit": 3}).json()
    assert [x["window_start_ms"] for x in iso["windows"]] == [x["window_start_ms"] for x in w[-3:]]
    agent = c.get(f"/v1/tenants/acme/agents/{_an_agent_with_calls(job_outputs)}").json()
    assert agent["source"] == "snapshot" and agent["callees"] and agent["metrics"]["request_count"] > 0
    for url, status in [("/v1/tenants/ghost/risk", 404), ("/v1/tenants/ghost/windows", 404),
                        ("/v1/tenants/acme/agents/nobody", 404), ("/v1/tenants/bad%20name/risk", 400),
                        ("/v1/tenants/acme/windows?from=yesterday", 400),
                        ("/v1/tenants/acme/windows?from=10&to=5", 400)]:
        r = c.get(url)
        assert r.status_code == status, (url, r.text)
        assert r.json()["detail"]
    assert c.get("/readyz").json()["checks"]["model"] is True
    assert 'aura_tenant_risk{tenant="acme"}' in c.get("/metrics").text
    # the committed model calibrates on the tenant's first 6 windows, then its verdicts are trusted
    assert (v["status"], v["calibration"], v["note"]) == ("ok", "complete", None)
    assert [x["status"] for x in w] == ["calibrating"] * 6 + ["ok"] * 6


@pytest.fixture(scope="module")
def calibrated_outputs(tmp_path_factory, calibrated_model_dir):
    """A real run (batch: the two fleets' files are not interleaved in event time) with the
    calibrated test model (baseline of 3 windows) over two fleets: acme (120 s, past its
    baseline) and fresh (20 s: still calibrating at its latest window)."""
    root = tmp_path_factory.mktemp("svc-calibrated")
    for tenant, seconds in (("acme", "120"), ("fresh", "20")):
        assert main(["simulate", "--agents", "20", "--duration", seconds, "--seed", "3", "--tenant", tenant,
                     "--out", str(root / f"tele-{tenant}")]) == 0
    assert main(["run", "--input", str(root / "tele-*" / "*.ndjson"), "--out", str(root / "svc" / "run"),
                 "--mode", "batch", "--no-progress", "--no-graph", "--model-dir", calibrated_model_dir]) == 0
    return root


def test_the_tenant_view_says_when_a_tenant_is_still_calibrating(calibrated_outputs):
    svc = calibrated_outputs / "svc"
    cfg = ApiConfig(data_dir=str(svc)).validate()
    run = load_run_config(None, landing=str(svc / "landing"), out=str(svc / "run"), graph=False)
    c = TestClient(create_app(cfg, run, start_runtime=False))
    fresh = c.get("/v1/tenants/fresh/risk").json()
    assert fresh["committed"] and 0 <= fresh["probability"] <= 1  # committed, but not trusted yet
    assert (fresh["status"], fresh["calibration"]) == ("calibrating", "calibrating")
    assert "still calibrating" in fresh["note"] and "raises no alert" in fresh["note"]
    acme = c.get("/v1/tenants/acme/risk").json()
    assert (acme["status"], acme["calibration"], acme["note"]) == ("ok", "complete", None)
    w = c.get("/v1/tenants/acme/windows").json()["windows"]
    assert len(w) == 12 and [x["status"] for x in w] == ["calibrating"] * 3 + ["ok"] * 9
    assert all(x["status"] == "calibrating" for x in c.get("/v1/tenants/fresh/windows").json()["windows"])
    metrics = c.get("/metrics").text
    assert 'aura_tenant_verdict_status{status="calibrating",tenant="fresh"} 1.0' in metrics
    assert 'aura_tenant_verdict_status{status="ok",tenant="acme"} 1.0' in metrics
    assert 'aura_tenant_verdict_status{status="calibrating",tenant="acme"} 0.0' in metrics


def test_the_tenant_view_says_when_the_latest_verdict_is_out_of_distribution(tmp_path):
    from tests.alerts_fixture import write_window

    c = _client(tmp_path)
    run_dir = str(tmp_path / "svc" / "run")
    write_window(run_dir, 0, 0.2, status=None, tenant="old")  # a file from before statuses
    old = c.get("/v1/tenants/old/risk").json()
    assert (old["status"], old["calibration"], old["note"]) == ("ok", "complete", None)
    write_window(run_dir, 0, 0.1)
    write_window(run_dir, 1, 0.95, status="out_of_distribution")
    v = c.get("/v1/tenants/acme/risk").json()
    assert (v["status"], v["calibration"], v["band"]) == ("out_of_distribution", "complete", "high")
    assert "out of distribution" in v["note"] and "not trusted" in v["note"]
    assert [x["status"] for x in c.get("/v1/tenants/acme/windows").json()["windows"]] == [
        "ok", "out_of_distribution"]


def _an_agent_with_calls(root) -> str:
    import pyarrow.parquet as pq

    d = root / "svc" / "run" / "snapshots" / "tenant=acme"
    t = pq.read_table(d / sorted(os.listdir(d))[-1]).to_pylist()[0]
    return t["agents"][t["edges"][0]["src"]]


def test_otlp_grpc_export_from_the_sdk_lands_in_the_same_spool(tmp_path):
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from pipelines.service.otlp_grpc import serve_grpc
    from tests.otlp_payloads import Fleet, serve_request

    c = _client(tmp_path, max_backlog_files=2)
    state = c.app.state.aura
    server, port = serve_grpc(state, "127.0.0.1", 0)
    try:
        fleet = Fleet()
        serve_request(fleet, random.Random(1), "gateway", None, int(T0 * 1e9), 0.0)
        spans = fleet.take()
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True,
                                    headers=(("x-aura-tenant", "acme"),), timeout=5)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        (path,) = _spooled(tmp_path)
        assert tenant_of(path) == "acme"
        assert ExportTraceServiceRequest.FromString(Path(path).read_bytes()) == encode_spans(spans)
        bad = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True,
                               headers=(("x-aura-tenant", "no tenant!"),), timeout=5)
        assert bad.export(spans) == SpanExportResult.FAILURE  # INVALID_ARGUMENT: not retried
        assert len(_spooled(tmp_path)) == 1
        metrics = c.get("/metrics").text
        assert 'aura_ingest_requests_total{code="200",route="traces_grpc"} 1.0' in metrics
        assert 'aura_ingest_rejected_total{reason="invalid_tenant",route="traces_grpc"} 1.0' in metrics
    finally:
        server.stop(0)


def test_service_configuration_file_then_environment_then_flags(tmp_path, monkeypatch):
    from pipelines.cli import build_parser, load_service_config

    cfg = tmp_path / "aura.toml"
    cfg.write_text('[api]\nport = 9000\ndefault_tenant = "fleet-a"\ngrace_s = 4\n'
                   '[run]\nwindow_size_s = 20\nconsensus = false\n')
    monkeypatch.setenv("AURA_API_PORT", "9100")
    monkeypatch.setenv("AURA_API_START_JOB", "false")
    monkeypatch.setenv("AURA_RUN_ALLOWED_LATENESS_S", "12.5")
    a = build_parser().parse_args(["api", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
                                   "--no-grpc"])
    api, run = load_service_config(a)
    assert (api.port, api.default_tenant, api.grace_s, api.start_job, api.grpc_port) == \
        (9100, "fleet-a", 4.0, False, None)
    assert (run.window_size_s, run.allowed_lateness_s, run.consensus) == (20.0, 12.5, False)
    assert run.landing == str(tmp_path / "d" / "landing") and run.out == str(tmp_path / "d" / "run")
    a = build_parser().parse_args(["api", "--config", str(cfg), "--port", "9200"])
    assert load_service_config(a)[0].port == 9200  # flags win over the environment
    for env, match in [("AURA_API_PORT", "expected int"), ("AURA_API_START_JOB", "boolean")]:
        monkeypatch.setenv(env, "lots")
        with pytest.raises(ValueError, match=match):
            load_service_config(build_parser().parse_args(["api"]))
        monkeypatch.delenv(env)
    cfg.write_text('[api]\nprot = 1\n')
    with pytest.raises(ValueError, match="unknown \\[api\\] settings"):
        load_service_config(build_parser().parse_args(["api", "--config", str(cfg)]))
    with pytest.raises(ValueError, match="default_tenant"):
        ApiConfig(default_tenant="no tenant!").validate()


def test_the_job_gets_no_aura_run_variables_beside_its_resolved_configuration(tmp_path, monkeypatch):
    """run.toml already holds what AURA_RUN_* said; read again they could move landing/out."""
    from pipelines.service.processes import spawn

    monkeypatch.setenv("AURA_RUN_OUT", "/somewhere/else")
    monkeypatch.setenv("AURA_API_PORT", "1")
    code = "import os; e = os.environ; print(e.get('AURA_RUN_OUT'), e.get('AURA_API_PORT'), e['EXTRA'])"
    child = spawn("env", ["-c", code], str(tmp_path), {"EXTRA": "x"}, drop_env_prefix="AURA_RUN_")
    assert child.wait(30) == 0
    assert Path(child.log_path).read_text().split() == ["None", "1", "x"]
