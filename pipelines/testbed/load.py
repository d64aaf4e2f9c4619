"""The load generator: open-loop Poisson arrivals against the entry agents, and the
client-side outcome of every request, per second.

Open loop: arrivals do not wait for answers (users keep coming when the fleet is slow).
The generator is bounded: when ``max_outstanding`` requests are already in flight an
arrival is shed (counted, and counted as a failure). Arrivals are counted in the second
they were sent in, outcomes in the second they were known (the answer, the error or the
client timeout), so a second's failure fraction is what the users saw fail then. After
the load stops the generator waits for the last answers (at most the client timeout):
the seconds run on past the load's duration by that drain, and every request sent has
exactly one outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from pipelines.testbed.spec import Ramp


@dataclass
class Second:
    """Client-side counts for one second of the run."""

    t: int  # seconds since the run started
    ts: float  # epoch seconds at the start of this second
    sent: int = 0  # arrivals in this second, shed ones included
    ok: int = 0  # outcomes known in this second: ...
    failed: int = 0  # an error answer or a connection error
    timed_out: int = 0
    shed: int = 0  # not sent: the generator's bound was reached
    degraded: int = 0  # answered 200 with a degraded result (counted in ok)
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, timeouts included

    @property
    def answered(self) -> int:
        return self.ok + self.failed + self.timed_out + self.shed

    @property
    def fail_fraction(self) -> float | None:
        """(failed + timed out + shed) / outcomes; None in a second without outcomes."""
        return (self.failed + self.timed_out + self.shed) / self.answered if self.answered else None

    def record(self) -> dict:
        lat = np.asarray(self.latencies) * 1e3
        q = np.percentile(lat, [50, 99]) if len(lat) else [None, None]
        frac = self.fail_fraction
        return {"t": self.t, "ts": round(self.ts, 3), "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "timed_out": self.timed_out, "shed": self.shed, "degraded": self.degraded,
                "fail_frac": None if frac is None else round(frac, 4),
                "p50_ms": None if q[0] is None else round(float(q[0]), 2),
                "p99_ms": None if q[1] is None else round(float(q[1]), 2)}


class LoadGenerator:
    """Poisson arrivals at ``rate`` x ``self.surge`` requests/s over the entry agents
    (chosen at random, their replicas in turn)."""

    def __init__(self, entries: dict[str, list[str]], rate: float, timeout_s: float,
                 max_outstanding: int, seed: int = 0):
        self.entries = {e: itertools.cycle(urls) for e, urls in entries.items()}
        self.names = sorted(entries)
        self.rate, self.timeout_s, self.max_outstanding = rate, timeout_s, max_outstanding
        self.rng = random.Random(f"load/{seed}")
        self.surge = Ramp()
        self.outstanding = 0
        self.seconds: list[Second] = []
        self._t0 = self._epoch0 = 0.0

    def _second(self, now: float) -> Second:
        """The bucket of monotonic time ``now`` (created on demand)."""
        i = max(0, int(now - self._t0))
        while len(self.seconds) <= i:
            self.seconds.append(Second(t=len(self.seconds), ts=self._epoch0 + len(self.seconds)))
        return self.seconds[i]

    async def run(self, duration_s: float, t0: float, epoch0: float) -> list[Second]:
        """Generate load from monotonic time ``t0`` (epoch ``epoch0``) for ``duration_s``;
        the seconds from ``t0`` until the last outcome is known."""
        self._t0, self._epoch0 = t0, epoch0
        self.seconds: list[Second] = []
        self._second(t0 + duration_s - 1e-9)  # at least the whole run, even if nothing arrives
        tasks: set[asyncio.Task] = set()
        limits = httpx.Limits(max_connections=self.max_outstanding, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=None) as client:
            next_t = max(time.monotonic(), t0)
            while True:
                next_t += self.rng.expovariate(self.rate * self.surge.value(next_t))
                if next_t - t0 >= duration_s:
                    break
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))
                sec = self._second(next_t)
                sec.sent += 1
                if self.outstanding >= self.max_outstanding:
                    sec.shed += 1
                    continue
                url = next(self.entries[self.rng.choice(self.names)])
                task = asyncio.create_task(self._one(client, url))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        return self.seconds

    async def _one(self, client: httpx.AsyncClient, url: str) -> None:
        self.outstanding += 1
        start = time.monotonic()
        outcome, degraded = "failed", False
        try:
            async with asyncio.timeout(self.timeout_s):
                r = await client.post(f"{url}/invoke", json={})
            if r.status_code == 200:
                outcome, degraded = "ok", bool(r.json().get("degraded"))
        except TimeoutError:
            outcome = "timed_out"
        except httpx.TransportError:
            pass
        finally:
            self.outstanding -= 1
        now = time.monotonic()
        sec = self._second(now)
        setattr(sec, outcome, getattr(sec, outcome) + 1)
        sec.degraded += degraded
        sec.latencies.append(min(now - start, self.timeout_s))
