"""Helpers for the dashboard tests and bench: real job outputs of simulated fleets laid out as
a service's data directory (a window can be held back and committed later, file by file in
the job's order), and the app served by uvicorn on a free port in a thread."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass

import uvicorn

from pipelines.alerts.outputs import PANE_FILE, TENANT_DIR
from pipelines.backtest.labels import load_labels
from pipelines.cli import main
from pipelines.config import ApiConfig, load_run_config
from pipelines.service.app import create_app
from pipelines.service.launch import free_port
from pipelines.simulation.output import write_labels

KINDS = ("snapshots", "features", "predictions")  # the order the job writes a window's files in


@dataclass(frozen=True)
class Fleet:
    tenant: str
    agents: int
    seconds: float
    seed: int


def build_outputs(root: str, fleets: list[Fleet]) -> tuple[str, str]:
    """Simulate each fleet and run the batch job (consensus on, no graph) over all of them into
    ``<root>/job``; the labels of every fleet go to ``<root>/svc/labels.json``. Returns (the
    job's output directory, the service's data directory ``<root>/svc``, still empty)."""
    svc = os.path.join(root, "svc")
    os.makedirs(svc, exist_ok=True)
    docs = []
    for f in fleets:
        labels = os.path.join(root, f"labels-{f.tenant}.json")
        assert main(["simulate", "--agents", str(f.agents), "--duration", str(f.seconds),
                     "--seed", str(f.seed), "--tenant", f.tenant,
                     "--out", os.path.join(root, f"tele-{f.tenant}"), "--labels", labels]) == 0
        docs += load_labels(labels)
    write_labels(docs, os.path.join(svc, "labels.json"))
    job = os.path.join(root, "job")
    assert main(["run", "--input", os.path.join(root, "tele-*", "*.ndjson"), "--out", job, "--mode", "batch",
                 "--no-progress", "--no-graph"]) == 0
    return job, svc


def windows(run_dir: str, tenant: str) -> list[int]:
    """Window starts (ms) with a snapshot, oldest first."""
    d = os.path.join(run_dir, "snapshots", f"{TENANT_DIR}{tenant}")
    return sorted({int(m[1]) for n in os.listdir(d) if (m := PANE_FILE.match(n))})


def commit_window(job_dir: str, run_dir: str, tenant: str, start_ms: int) -> None:
    """Copy one window's files from the job's outputs into ``run_dir`` as the job writes them:
    snapshot, feature row, then prediction, each renamed into place."""
    for kind in KINDS:
        src_dir = os.path.join(job_dir, kind, f"{TENANT_DIR}{tenant}")
        dst_dir = os.path.join(run_dir, kind, f"{TENANT_DIR}{tenant}")
        os.makedirs(dst_dir, exist_ok=True)
        for name in sorted(os.listdir(src_dir)):
            m = PANE_FILE.match(name)
            if m and int(m[1]) == start_ms:
                tmp = os.path.join(dst_dir, f"{name}.{uuid.uuid4().hex}.tmp")
                shutil.copyfile(os.path.join(src_dir, name), tmp)
                os.replace(tmp, os.path.join(dst_dir, name))


def commit_all(job_dir: str, run_dir: str, tenant: str, hold_back: int = 0) -> list[int]:
    """Commit the tenant's windows but the last ``hold_back``; those held back."""
    starts = windows(job_dir, tenant)
    keep = starts[:len(starts) - hold_back]
    for s in keep:
        commit_window(job_dir, run_dir, tenant, s)
    return starts[len(keep):]


class ServedApp:
    """``create_app(..., start_runtime=False)`` over ``data_dir`` under uvicorn in a thread."""

    def __init__(self, data_dir: str) -> None:
        api = ApiConfig(data_dir=data_dir).validate()
        run = load_run_config(None, landing=os.path.join(data_dir, "landing"),
                              out=os.path.join(data_dir, "run"), graph=False)
        self.app = create_app(api, run, start_runtime=False)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="dashboard-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
