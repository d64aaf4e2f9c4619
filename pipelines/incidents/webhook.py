"""The webhook actuator: POST each intervention as JSON to the operator's gateway.

Each request carries ``Idempotency-Key: <intervention id>`` (ids are deterministic), so a
receiver can drop the duplicates that retries may cause. 5xx, 408, 429 and transport errors
are retried with exponential backoff (a numeric ``Retry-After`` overrides it, up to a cap);
other non-2xx answers are final. What cannot be delivered becomes a dead letter: one NDJSON
line in ``dead_letter_path``, or an entry in ``self.dead_letters`` when there is no path.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from pipelines.incidents.actuator import DEAD_LETTER, DELIVERED, Actuator, Delivery
from pipelines.incidents.interventions import Intervention

log = logging.getLogger("aura.incidents")
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


def _retry_after_s(response: httpx.Response) -> float | None:
    """The numeric ``Retry-After`` in seconds (HTTP-date forms are ignored), or None."""
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return None if math.isnan(value) else max(value, 0.0)


class WebhookActuator(Actuator):
    """POST interventions to ``url``; never raises for a failed delivery."""

    name = "webhook"

    def __init__(self, url: str, retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 2.0,
                 dead_letter_path: str | None = None, headers: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep, max_retry_after_s: float = 30.0) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ValueError(f"webhook URL {url!r} is invalid: {e}") from e
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"webhook URL must be http(s)://host[:port]/path, got {url!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.dead_letter_path = dead_letter_path
        self.dead_letters: list[dict[str, Any]] = []
        self._sleep = sleep
        self._client = httpx.Client(timeout=timeout_s, headers=dict(headers or {}))

    def act(self, iv: Intervention, now_s: float) -> Delivery:
        body = iv.to_dict()
        attempts = 0
        while True:
            attempts += 1
            wait = self.backoff_s * 2 ** (attempts - 1)
            try:
                response = self._client.post(self.url, json=body, headers={"Idempotency-Key": iv.id})
            except httpx.TimeoutException as e:
                failure = f"timeout ({type(e).__name__})"
            except httpx.TransportError as e:
                failure = f"connection error ({str(e) or type(e).__name__})"
            else:
                status = response.status_code
                if response.is_success:
                    return Delivery(iv.id, self.name, DELIVERED, attempts, f"http {status}")
                if status not in RETRYABLE_STATUS:
                    return self._dead_letter(iv, f"http {status}: {response.text[:200]}", attempts, now_s)
                failure = f"http {status}"
                retry_after = _retry_after_s(response)
                if retry_after is not None:
                    wait = min(retry_after, self.max_retry_after_s)
            if attempts > self.retries:
                return self._dead_letter(iv, f"{failure} after {attempts} attempts", attempts, now_s)
            self._sleep(wait)

    def _dead_letter(self, iv: Intervention, reason: str, attempts: int, now_s: float) -> Delivery:
        letter = {"intervention": iv.to_dict(), "url": self.url, "reason": reason, "attempts": attempts,
                  "at": now_s}
        log.warning("intervention %s not delivered to %s: %s", iv.id, self.url, reason)
        if self.dead_letter_path is None:
            self.dead_letters.append(letter)
        else:
            try:
                with open(self.dead_letter_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(letter, separators=(",", ":")) + "\n")
            except OSError as e:  # keep it rather than lose it, and still do not raise
                log.error("cannot write dead letter to %s: %s", self.dead_letter_path, e)
                self.dead_letters.append(letter)
        return Delivery(iv.id, self.name, DEAD_LETTER, attempts, reason)

    def close(self) -> None:
        self._client.close()
