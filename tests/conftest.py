"""Shared helpers: telemetry records and files."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime

import orjson
import pytest

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(agent: str = "a1", t: float = T0 + 1, tenant: str = "acme", calls=None, **metrics) -> dict:
    rec = {"tenant": tenant, "agent_id": agent, "ts": iso(t), "latency_p50_ms": 10.0,
           "latency_p99_ms": 25.0, "error_rate": 0.01, "request_count": 100, "cpu": 0.4,
           "memory": 0.5, "queue_depth": 2, "in_flight": 3,
           "calls": calls if calls is not None else [
               {"dst": "db", "count": 10, "errors": 1, "latency_ms": 4.5}]}
    rec.update(metrics)
    return rec


def line(rec: dict) -> bytes:
    return orjson.dumps(rec)


def write_ndjson(path, lines: list[bytes]) -> str:
    path = str(path)
    with open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def out_dir(tmp_path):
    return str(tmp_path / "out")


@pytest.fixture(scope="session")
def calibrated_model_dir(tmp_path_factory) -> str:
    """A tiny calibrated model artifact (``tests.calibrated_model``): baseline of 3 windows."""
    from tests.calibrated_model import write_calibrated_model

    return write_calibrated_model(str(tmp_path_factory.mktemp("calibrated-model")))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in a session of its own, with everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def procs():
    """Job processes started by a test; any still alive at the end are killed (by group)."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        kill_group(p)
