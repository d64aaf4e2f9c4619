"""What a run of the job did (``RunSummary``), the same for every engine: counts by stage,
dead letters by reason, verdicts by status, and whether they reconcile; ``summary.json``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RunSummary:
    """What a run did; ``reconciles`` checks read == windowed + dead-lettered."""

    mode: str
    out_dir: str
    read: int = 0
    windowed: int = 0
    dead: Counter = field(default_factory=Counter)
    panes: int = 0
    windows: int = 0
    feature_rows: int = 0
    predictions: int = 0
    window_dead: Counter = field(default_factory=Counter)  # windows without features, by reason
    graph: Counter = field(default_factory=Counter)  # graph sink: written./spilled.<kind>, rows
    consensus: Counter = field(default_factory=Counter)  # committed / disputed verdicts
    files: int = 0
    elapsed_s: float = 0.0
    verdicts: Counter = field(default_factory=Counter)  # written verdicts by status (pipelines.calibration)
    ledger: dict = field(default_factory=dict)  # the output's whole history (pipelines.source_ledger)

    @property
    def dead_total(self) -> int:
        return sum(self.dead.values())

    @property
    def reconciles(self) -> bool:
        """read == windowed + dead-lettered; with consensus, predictions == committed + disputed;
        with a ledger, its whole history reconciles too (no window short of its records)."""
        c = self.consensus
        agreed = not c or self.predictions == c["committed"] + c["disputed"]
        return self.read == self.windowed + self.dead_total and agreed and self.ledger.get("reconciles", True)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "out_dir": self.out_dir, "files": self.files,
                "read": self.read, "windowed": self.windowed, "dead_lettered": self.dead_total,
                "dead_by_reason": dict(sorted(self.dead.items())), "windows": self.windows,
                "panes": self.panes, "feature_rows": self.feature_rows, "predictions": self.predictions,
                "windows_dead_lettered": dict(sorted(self.window_dead.items())),
                "graph": dict(sorted(self.graph.items())),
                "consensus": dict(sorted(self.consensus.items())),
                "verdicts": dict(sorted(self.verdicts.items())),
                "elapsed_s": round(self.elapsed_s, 3),
                **({"ledger": self.ledger} if self.ledger else {}),
                "reconciles": self.reconciles}

    @classmethod
    def from_dict(cls, d: dict) -> RunSummary:
        """Back from ``summary.json`` (``reconciles`` is recomputed, not trusted; a summary
        written before verdict statuses existed has none)."""
        return cls(d["mode"], d["out_dir"], d["read"], d["windowed"], Counter(d["dead_by_reason"]),
                   d["panes"], d["windows"], d["feature_rows"], d["predictions"],
                   Counter(d["windows_dead_lettered"]), Counter(d["graph"]), Counter(d["consensus"]),
                   d["files"], d["elapsed_s"], Counter(d.get("verdicts", {})), d.get("ledger", {}))
