"""The dry-run and webhook actuators, the webhook against a real local HTTP server."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipelines.incidents.actuator import DEAD_LETTER, DELIVERED, LOGGED, build_actuator
from pipelines.incidents.dry_run import DryRunActuator
from pipelines.incidents.interventions import SHED_LOAD, Intervention
from pipelines.incidents.webhook import WebhookActuator

NOW = 1_767_225_700.0
Reply = tuple[int, dict[str, str], bytes]  # status, headers, body


def intervention(magnitude: float = 0.25) -> Intervention:
    return Intervention("acme", 1_767_225_600_000, 1_767_225_660_000, 0.91, {"view": 2, "votes": ["n1"]},
                        SHED_LOAD, ("gateway",), magnitude, 120.0, "error storm", NOW, incident_id="inc-7")


class Receiver:
    """A scripted HTTP receiver: answers each POST with the next reply (the last one repeats)."""

    def __init__(self, replies: list[Reply], delay_s: float = 0.0) -> None:
        self.replies, self.delay_s = replies, delay_s
        self.requests: list[tuple[dict[str, str], Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers), json.loads(body)))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                n = min(len(receiver.requests), len(receiver.replies))
                status, headers, payload = receiver.replies[n - 1]
                try:
                    self.send_response(status)
                    for k, v in {**headers, "Content-Length": str(len(payload))}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except ConnectionError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/interventions"


@contextmanager
def serve(*replies: Reply, delay_s: float = 0.0) -> Iterator[Receiver]:
    receiver = Receiver(list(replies), delay_s)
    thread = threading.Thread(target=receiver.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(5)


@contextmanager
def webhook(url: str, **kwargs: Any) -> Iterator[tuple[WebhookActuator, list[float]]]:
    """A webhook actuator whose waits are recorded instead of slept."""
    waits: list[float] = []
    actuator = WebhookActuator(url, sleep=waits.append, **kwargs)
    try:
        yield actuator, waits
    finally:
        actuator.close()


OK: Reply = (200, {}, b"{}")


def test_delivers_the_document_with_an_idempotency_key() -> None:
    iv = intervention()
    with serve(OK) as rx, webhook(rx.url, headers={"Authorization": "Bearer t"}) as (act, waits):
        d = act.act(iv, NOW)
    assert (d.status, d.attempts, d.ok, d.actuator) == (DELIVERED, 1, True, "webhook")
    assert d.intervention_id == iv.id and d.detail == "http 200"
    (headers, body), = rx.requests
    assert body == iv.to_dict()
    assert headers["Idempotency-Key"] == iv.id and headers["Authorization"] == "Bearer t"
    assert headers["Content-Type"] == "application/json" and waits == []


def test_retries_5xx_with_exponential_backoff() -> None:
    iv = intervention()
    busy: Reply = (503, {}, b"busy")
    with serve(busy, busy, OK) as rx, webhook(rx.url, backoff_s=0.5) as (act, waits):
        d = act.act(iv, NOW)
    assert (d.status, d.attempts) == (DELIVERED, 3)
    assert waits == [0.5, 1.0]
    assert {h["Idempotency-Key"] for h, _ in rx.requests} == {iv.id} and len(rx.requests) == 3


def test_always_5xx_becomes_a_dead_letter_file(tmp_path) -> None:
    iv, path = intervention(), tmp_path / "dead.ndjson"
    with serve((500, {}, b"boom")) as rx, webhook(rx.url, dead_letter_path=str(path)) as (act, waits):
        d = act.act(iv, NOW)
    assert (d.status, d.attempts, d.ok) == (DEAD_LETTER, 4, False)
    assert d.detail == "http 500 after 4 attempts" and len(rx.requests) == 4 and len(waits) == 3
    assert act.dead_letters == []  # written to the file, not kept
    letter, = [json.loads(x) for x in path.read_text().splitlines()]
    assert (letter["reason"], letter["attempts"], letter["at"], letter["url"]) == (d.detail, 4, NOW, rx.url)
    assert Intervention.from_dict(letter["intervention"]) == iv


def test_4xx_is_not_retried() -> None:
    with serve((400, {}, b"magnitude rejected" + b"x" * 400)) as rx, webhook(rx.url) as (act, waits):
        d = act.act(intervention(), NOW)
    assert (d.status, d.attempts, len(rx.requests), waits) == (DEAD_LETTER, 1, 1, [])
    assert d.detail.startswith("http 400: magnitude rejected") and len(d.detail) == len("http 400: ") + 200
    letter, = act.dead_letters
    assert letter["reason"] == d.detail and letter["attempts"] == 1


def test_closed_port_is_a_connection_dead_letter() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with webhook(f"http://127.0.0.1:{port}/x", retries=2, backoff_s=0.1) as (act, waits):
        d = act.act(intervention(), NOW)
    assert (d.status, d.attempts, waits) == (DEAD_LETTER, 3, [0.1, 0.2])
    assert d.detail.startswith("connection") and d.detail.endswith("after 3 attempts")
    assert act.dead_letters[0]["reason"] == d.detail


def test_timeout_is_retried_then_dead_letter() -> None:
    with serve(OK, delay_s=0.5) as rx, webhook(rx.url, retries=1, timeout_s=0.1) as (act, waits):
        d = act.act(intervention(), NOW)
    assert (d.status, d.attempts, len(waits)) == (DEAD_LETTER, 2, 1)
    assert d.detail.startswith("timeout") and d.detail.endswith("after 2 attempts")


def test_429_honours_retry_after_up_to_the_cap() -> None:
    replies = [(429, {"Retry-After": "7"}, b""), (429, {"Retry-After": "3600"}, b""),
               (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b""), OK]
    with serve(*replies) as rx, webhook(rx.url, backoff_s=0.5, max_retry_after_s=60.0) as (act, waits):
        d = act.act(intervention(), NOW)
    assert (d.status, d.attempts) == (DELIVERED, 4)
    assert waits == [7.0, 60.0, 2.0]  # numeric honoured, capped; an HTTP date falls back to backoff


def test_408_is_retried() -> None:
    with serve((408, {}, b""), OK) as rx, webhook(rx.url) as (act, waits):
        assert act.act(intervention(), NOW).attempts == 2


@pytest.mark.parametrize("url", ["ftp://host/x", "localhost:8080/x", "http://", "not a url"])
def test_bad_url_is_rejected_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        WebhookActuator(url)


def test_dry_run_writes_lines(tmp_path) -> None:
    path = tmp_path / "dry.ndjson"
    ivs = [intervention(0.25), intervention(0.5)]
    act = DryRunActuator(str(path))
    deliveries = [act.act(iv, NOW + i) for i, iv in enumerate(ivs)]
    assert [d.status for d in deliveries] == [LOGGED, LOGGED] and all(d.ok for d in deliveries)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [Intervention.from_dict(x["intervention"]) for x in lines] == ivs
    assert [x["at"] for x in lines] == [NOW, NOW + 1]
    assert lines[0]["delivery"] == {"intervention_id": ivs[0].id, "actuator": "dry-run", "status": LOGGED,
                                    "attempts": 1, "detail": ""}


def test_dry_run_logs_without_a_path(caplog: pytest.LogCaptureFixture) -> None:
    iv = intervention()
    with caplog.at_level(logging.INFO, logger="aura.incidents"):
        assert DryRunActuator().act(iv, NOW).status == LOGGED
    assert iv.id in caplog.text and '"status":"logged"' in caplog.text


def test_dry_run_unwritable_path_does_not_raise(tmp_path) -> None:
    d = DryRunActuator(str(tmp_path / "missing" / "dry.ndjson")).act(intervention(), NOW)
    assert d.status == DEAD_LETTER and "cannot write" in d.detail


def test_build_actuator(tmp_path) -> None:
    path = str(tmp_path / "dry.ndjson")
    dry = build_actuator(f"dry-run:{path}")
    assert isinstance(dry, DryRunActuator) and dry.path == path
    assert build_actuator("dry-run").path is None
    with serve(OK) as rx:
        hook = build_actuator(f"webhook:{rx.url}", retries=1)
        try:
            assert isinstance(hook, WebhookActuator) and hook.url == rx.url and hook.retries == 1
            assert hook.act(intervention(), NOW).status == DELIVERED
        finally:
            hook.close()
    with pytest.raises(ValueError, match="unknown actuator 'bogus'.*dry-run.*webhook"):
        build_actuator("bogus")
    with pytest.raises(ValueError, match="needs a URL"):
        build_actuator("webhook")
