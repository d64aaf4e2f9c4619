"""The service supervises its children: ``aura api`` as a process, its streaming job, spool
worker, embedded graph server and a consensus validator (``--validator-processes``) killed
with SIGKILL are started again (with their ledgers they carry on); the
service itself killed with SIGKILL takes its children with it, and a new service on the same
data directory reaps whatever a killed one left and starts cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from pipelines.service.launch import ApiProcess
from pipelines.service.processes import kill_stale, wait_until
from pipelines.service.runtime import CHILDREN


def _children(data: str) -> dict[str, int]:
    try:
        with open(os.path.join(data, CHILDREN)) as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def _restarts(url: str, child: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    line = f'aura_service_child_restarts_total{{child="{child}"}}'
    return next(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line))


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def api(tmp_path):
    procs: list[ApiProcess] = []

    def start() -> ApiProcess:
        # with the embedded graph server and the consensus validators as processes
        p = ApiProcess(str(tmp_path / "svc"), ("--validator-processes",)).start()
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop(60)
    kill_stale(_children(str(tmp_path / "svc")))  # a test that failed midway leaves nothing running


def test_dead_children_are_started_again_and_die_with_the_service(api, tmp_path):
    svc = api()
    data = svc.data_dir
    first = _children(data)
    assert set(first) == {"spool-worker", "job", "graph"} | {f"validator-{i}" for i in range(4)}
    for name in ("job", "spool-worker", "graph", "validator-1"):
        before = _children(data)[name]
        os.kill(before, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_until(lambda n=name, b=before: _children(data).get(n, b) != b, 60), name
        assert wait_until(lambda: _ready(svc.url), 120), f"not ready again after {name} was killed"
        print(f"\n{name}: killed, started again and ready in {time.monotonic() - t0:.1f} s")
        assert _restarts(svc.url, name.split("-")[0] if name.startswith("validator") else name) == 1
        assert not _alive(before)

    # the service killed outright: its workers go with it; the graph server (a session of
    # its own) is reaped by the next service on this data directory
    kids = _children(data)
    svc.proc.kill()
    svc.proc.wait()
    workers = [pid for name, pid in kids.items() if name != "graph"]
    assert wait_until(lambda: not any(_alive(p) for p in workers), 10), kids
    assert _alive(kids["graph"])
    stale = subprocess.Popen([sys.executable, "-c", "import time  # pipelines.stale\ntime.sleep(120)"])
    with open(os.path.join(data, CHILDREN), "w") as fh:
        json.dump({"spool-worker": stale.pid, "graph": kids["graph"]}, fh)
    again = api()
    assert stale.wait(timeout=10) == -signal.SIGKILL and not _alive(kids["graph"])

    # a child started again by the supervisor still drains on a clean stop
    job = _children(data)["job"]
    os.kill(job, signal.SIGKILL)
    assert wait_until(lambda: _children(data)["job"] != job, 60)
    assert wait_until(lambda: _ready(again.url), 120)
    assert again.stop(120) == 0 and not os.path.exists(os.path.join(data, CHILDREN))
