"""A real headless Chromium (Debian's ``chromium``) driven over the Chrome DevTools Protocol.

``Chromium`` starts the browser by PID (a session of its own, a throw-away profile, remote
debugging on a free port) and stops it by PID; ``Page`` is one tab over its own DevTools
WebSocket (the ``websockets`` package's sync client): navigate, evaluate, wait for a
condition, capture a screenshot, and collect what the page logged as an error.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from websockets.sync.client import ClientConnection, connect

BINARY = "/usr/bin/chromium"
FLAGS = ("--headless=new", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CdpError(RuntimeError):
    """A DevTools command answered with an error, or the page threw."""


class Page:
    """One tab: commands and their answers, events kept in ``events``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict:
        """Send one command, keep the events that arrive meanwhile, answer its result."""
        cid = next(self.ids)
        self.ws.send(json.dumps({"id": cid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("id") == cid:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str, timeout_s: float = 30.0) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        r = self.call("Runtime.evaluate", timeout_s, expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise CdpError(f"{expression[:80]!r} threw: {r['exceptionDetails']}")
        return r["result"].get("value")

    def navigate(self, url: str, timeout_s: float = 30.0) -> None:
        """Open ``url`` and wait for its load event."""
        n = len(self.events)
        r = self.call("Page.navigate", url=url)
        if r.get("errorText"):
            raise CdpError(f"navigate {url}: {r['errorText']}")
        self.wait_event("Page.loadEventFired", timeout_s, after=n)

    def wait_event(self, method: str, timeout_s: float = 30.0, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            for e in self.events[after:]:
                if e["method"] == method:
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} in {timeout_s} s")
            with contextlib.suppress(TimeoutError):
                self.events.append(json.loads(self.ws.recv(timeout=left)))

    def wait_for(self, expression: str, timeout_s: float = 20.0, every_s: float = 0.1) -> Any:
        """Evaluate until the value is truthy; that value (TimeoutError with the last one)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still {value!r} after {timeout_s} s")
            time.sleep(every_s)

    def screenshot(self, path: str) -> str:
        """The whole page (beyond the viewport) as a PNG at ``path``."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """What the page reported as an error: exceptions, console.error, error log entries."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                args = (str(a.get("value", a.get("description"))) for a in p["args"])
                out.append("console: " + " ".join(args))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """A headless Chromium process of its own (module doc); a context manager."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        if not os.access(BINARY, os.X_OK):
            raise RuntimeError(f"{BINARY} is missing: `make debs` (or apt-get install chromium) installs it")
        self.size = (width, height)
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="aura-chromium-")
        self.proc: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Chromium:
        log = open(os.path.join(self.profile, "chromium.log"), "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [BINARY, *FLAGS, f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http}/json/version", timeout=1) as r:
                    json.load(r)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"chromium did not open its DevTools port in {timeout_s} s: {self._log_tail()}")

    def new_page(self) -> Page:
        """A new tab, its DevTools session open."""
        req = urllib.request.Request(f"{self.http}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            target = json.load(r)
        return Page(connect(target["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10))

    def stop(self) -> None:
        """SIGTERM to the browser's process group (it was started in a session of its own), then
        SIGKILL after 5 s; the profile is removed."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.profile, "chromium.log"), "rb") as fh:
                return fh.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
