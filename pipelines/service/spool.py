"""The span spool: each accepted OTLP request's protobuf bytes, one durable file each.

The service writes a file before it answers 2xx; the spool worker reads the files in order,
turns their spans into telemetry records and deletes a file once every span in it is in a
landed record or a dead letter. Its backlog is the service's backpressure signal.
"""

from __future__ import annotations

import os
import time

from pipelines.service.durable import unique_stem, write_durably

SUFFIX = ".pb"


class Spool:
    """A directory of spooled requests named ``otlp-<ns>-<pid>-<seq>_<tenant>.pb``."""

    def __init__(self, path: str, backlog_cache_s: float = 0.1):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._cache_s = backlog_cache_s
        self._backlog = (0.0, 0)

    def put(self, data: bytes, tenant: str) -> str:
        """Spool one request durably; its path."""
        return write_durably(self.path, f"{unique_stem('otlp')}_{tenant}{SUFFIX}", data)

    def _spooled(self) -> list[str]:
        return [e.path for e in os.scandir(self.path)
                if e.name.endswith(SUFFIX) and not e.name.startswith(".")]

    def pending(self) -> list[str]:
        """Spooled files, oldest first."""
        return sorted(self._spooled())

    def backlog(self) -> int:
        """Files waiting (recounted at most every ``backlog_cache_s``)."""
        at, n = self._backlog
        now = time.monotonic()
        if now - at >= self._cache_s:
            n = len(self._spooled())
            self._backlog = (now, n)
        return n


def tenant_of(path: str) -> str:
    """The tenant a spooled file was received for (from its name)."""
    name = os.path.basename(path)
    return name[name.index("_") + 1:-len(SUFFIX)]


def received_at(path: str) -> float:
    """When the service accepted a spooled file (epoch seconds, from its name)."""
    return int(os.path.basename(path).split("-")[1]) / 1e9
