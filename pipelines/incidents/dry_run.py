"""The dry-run actuator: log each intervention and carry nothing out (the default outside the
simulator). One NDJSON line per intervention, to a file or to the ``aura.incidents`` logger."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from pipelines.incidents.actuator import DEAD_LETTER, LOGGED, Actuator, Delivery
from pipelines.incidents.interventions import Intervention

log = logging.getLogger("aura.incidents")


class DryRunActuator(Actuator):
    """Append ``{"intervention", "delivery", "at"}`` lines to ``path``, or log them when no path."""

    name = "dry-run"

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def act(self, iv: Intervention, now_s: float) -> Delivery:
        delivery = Delivery(iv.id, self.name, LOGGED)
        line = json.dumps({"intervention": iv.to_dict(), "delivery": asdict(delivery), "at": now_s},
                          separators=(",", ":"))
        if self.path is None:
            log.info("dry-run intervention %s", line)
            return delivery
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError as e:  # never raise for a failed delivery
            log.error("dry-run cannot write %s: %s; intervention %s", self.path, e, line)
            return Delivery(iv.id, self.name, DEAD_LETTER, detail=f"cannot write {self.path}: {e}")
        return delivery
