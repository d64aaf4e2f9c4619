"""Validators that carry on a chain of earlier runs into the same output directory.

After a crash a streaming job processes again the windows that were not final; their
verdicts were perhaps committed already. ``Resuming`` wraps any validators (in process or
remote) with what the audit logs under ``<out>/audit/`` say was committed: a verdict equal
to its first commit gets that commit's certificate back and is not proposed again; one that
differs is disputed ``conflicts_with_committed`` (a verdict is committed once, whatever
runs after it). Engine-neutral: the Beam and the Flink job use it alike.
"""

from __future__ import annotations

from pipelines.consensus.audit import committed_before
from pipelines.consensus.messages import Request
from pipelines.consensus.stage import CommittedVerdict, DisputedVerdict


class Resuming:
    """``process(requests) -> (committed, disputed)`` like the validators it wraps."""

    def __init__(self, validators, out_dir: str):
        self.validators = validators
        self.before = committed_before(out_dir)
        self.already = 0  # verdicts answered from an earlier commit

    @property
    def replicas(self):
        return getattr(self.validators, "replicas", [])

    def process(self, requests: list[Request]) -> tuple[list[CommittedVerdict], list[DisputedVerdict]]:
        fresh = [r for r in requests if r.vid not in self.before]
        committed, disputed = self.validators.process(fresh) if fresh else ([], [])
        for req in requests:
            if req.vid not in self.before:
                continue
            old, cert = self.before[req.vid]
            if old == req.verdict:
                committed.append(CommittedVerdict(req.verdict, cert))
                self.already += 1
            else:
                disputed.append(DisputedVerdict(req.verdict, "conflicts_with_committed", [
                    {"committed": dict(zip(("probability", "band", "digest"), old.canon()[4:])),
                     "certificate": cert}]))
        return committed, disputed

    def close(self) -> None:
        self.validators.close()
