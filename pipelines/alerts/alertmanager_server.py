"""A real Prometheus Alertmanager as a child process, for tests, benchmarks and the demo.

Debian's ``prometheus-alertmanager`` (0.25) on a free loopback port, clustering off, its own
storage directory and a generated configuration that routes every alert to one webhook
receiver (or to none). Started with ``start()`` (polls ``/-/ready``), stopped by its PID
(SIGTERM, then SIGKILL). Alertmanager reads YAML; JSON is YAML, so the config is JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import httpx

from pipelines.service.processes import terminate

BINARY = "/usr/bin/prometheus-alertmanager"
INSTALL_HINT = ("install it with `apt-get install -y --no-install-recommends prometheus-alertmanager` "
                "(`make` does this when it is missing)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(path: str | None = None) -> str:
    """The Alertmanager executable, or FileNotFoundError saying how to install it."""
    for candidate in (path, os.environ.get("AURA_ALERTMANAGER_BIN"), BINARY,
                      shutil.which("prometheus-alertmanager"), shutil.which("alertmanager")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"Prometheus Alertmanager not found (looked for {path or BINARY} and "
                            f"prometheus-alertmanager/alertmanager on PATH); {INSTALL_HINT}")


def routing_config(webhook_url: str | None, group_wait: str = "0s", group_interval: str = "1s",
                   repeat_interval: str = "1h", resolve_timeout: str = "5m") -> dict:
    """Every alert to one webhook receiver (``send_resolved``), grouped per incident."""
    receiver: dict = {"name": "aura"}
    if webhook_url:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    return {"global": {"resolve_timeout": resolve_timeout},
            "route": {"receiver": "aura", "group_by": ["alertname", "tenant", "incident"],
                      "group_wait": group_wait, "group_interval": group_interval,
                      "repeat_interval": repeat_interval},
            "receivers": [receiver]}


class AlertmanagerProcess:
    """One Alertmanager child process on ``127.0.0.1:<port>`` (port fixed across restarts)."""

    def __init__(self, root: str, webhook_url: str | None = None, port: int | None = None,
                 binary: str | None = None, config: dict | None = None, **routing):
        self.binary = find_binary(binary)
        self.root = root
        self.port = port or free_port()
        self.config = config if config is not None else routing_config(webhook_url, **routing)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(root, "alertmanager.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> AlertmanagerProcess:
        """Starts the process and waits until ``/-/ready`` answers 200."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
        cfg = os.path.join(self.root, "alertmanager.yml")
        with open(cfg, "w") as fh:
            json.dump(self.config, fh, indent=1)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                [self.binary, f"--config.file={cfg}", f"--storage.path={os.path.join(self.root, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited with {self.proc.returncode} on port {self.port}: "
                                   f"{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"alertmanager on port {self.port} not ready after {timeout_s} s: "
                           f"{self._log_tail()}")

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to our PID, SIGKILL if it does not exit within ``grace_s``."""
        proc, self.proc = self.proc, None
        terminate(proc, grace_s)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def alerts(self, **filters: str) -> list[dict]:
        """``GET /api/v2/alerts`` (active, silenced and inhibited; filters as label matchers)."""
        params = [("filter", f'{k}="{v}"') for k, v in filters.items()]
        r = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5.0)
        r.raise_for_status()
        return r.json()

    def _log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def __enter__(self) -> AlertmanagerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
