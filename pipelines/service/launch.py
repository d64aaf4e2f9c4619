"""``aura api`` as a child process (the demo, tests, benchmarks): start, wait until ready,
stop by PID with SIGTERM so that it drains."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import orjson


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiProcess:
    def __init__(self, data_dir: str, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 port: int | None = None):
        self.data_dir, self.args, self.env = data_dir, list(args), env or {}
        self.port = port or free_port()
        self.grpc_port = free_port()
        self.log_path = os.path.join(data_dir, "api.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> ApiProcess:
        os.makedirs(self.data_dir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipelines.cli", "api", "--port", str(self.port),
                 "--grpc-port", str(self.grpc_port), "--data-dir", self.data_dir, *self.args],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop(10.0)
        raise RuntimeError(f"aura api did not become ready in {timeout_s:.0f} s; see {self.log_path}")

    def log_records(self) -> list[dict]:
        """The service's log so far, one dict per JSON line (``--log-format json``, the default);
        a line that is not a JSON object is kept as ``{"msg": line}``."""
        out = []
        with open(self.log_path, "rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    doc = None
                out.append(doc if isinstance(doc, dict) else {"msg": raw.decode(errors="replace").rstrip()})
        return out

    def stop(self, timeout_s: float = 600.0) -> int:
        """SIGTERM (the service drains: spool, then the job), SIGKILL after ``timeout_s``; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> ApiProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
