"""The consensus stage as a plain class: proposed verdicts with their model inputs in,
committed verdicts with quorum certificates and disputed verdicts (with the objections
seen) out. The validators run in process on a zero-delay simulated network; the chain
continues across calls and every committed block goes to the audit log."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from pipelines.consensus.audit import AuditLog
from pipelines.consensus.crypto import Committee, Signer, make_committee
from pipelines.consensus.messages import Committed, Objection, Request, Verdict, objection_bytes, vote_bytes
from pipelines.consensus.network import Network
from pipelines.consensus.replica import ProtocolConfig, Replica
from pipelines.consensus.validator import RiskBands, Validator


@dataclass(frozen=True)
class ConsensusConfig:
    validators: int = 4  # n = 3f + 1
    epsilon: float = 1e-4  # largest |p - p'| two validators may differ by and still agree
    bands: RiskBands = RiskBands()
    max_block: int = 256  # verdicts per block
    base_timeout: float = 1.0  # simulated seconds per view before a view change (doubling)
    max_timeouts: int = 8  # per call: windows still open afterwards are disputed (no quorum)


@dataclass
class CommittedVerdict:
    verdict: Verdict
    certificate: dict  # chain, height, view, block_hash, signers, signatures (hex)


@dataclass
class DisputedVerdict:
    verdict: Verdict
    reason: str  # objected (f+1 validators disagree) | no_quorum | duplicate
    objections: list[dict] = field(default_factory=list)  # validator, probability, band, signature


class ConsensusStage:
    """n validators, each with its own key and predictor, ordering verdicts by HotStuff."""

    def __init__(self, predictors: list, cfg: ConsensusConfig = ConsensusConfig(),
                 audit_path: str | None = None, chain_id: str | None = None, key_seed: bytes | None = None,
                 wrap=None, keys: tuple[Committee, list[Signer]] | None = None):
        if len(predictors) != cfg.validators:
            raise ValueError(f"{cfg.validators} validators need {cfg.validators} predictors")
        self.cfg = cfg
        self.chain_id = chain_id or uuid.uuid4().hex
        # persistent keys (``keys``, see pipelines.consensus.keys), or fresh / seeded ones
        self.committee, signers = keys or make_committee(cfg.validators, key_seed)
        if self.committee.n != cfg.validators:
            raise ValueError(f"{cfg.validators} validators need as many keys, got {self.committee.n}")
        # the stage reads Committed notices (and keeps the audit log), not the replicas' logs;
        # the last 3 entries stay for a Byzantine leader's replays (pipelines/consensus/byzantine.py)
        pcfg = ProtocolConfig(base_timeout=cfg.base_timeout, max_block=cfg.max_block, keep_log=3)
        self.replicas = [Replica(i, self.committee, signers[i], Validator(p, cfg.bands, cfg.epsilon),
                                 self.chain_id, pcfg) for i, p in enumerate(predictors)]
        nodes = {str(r.rid): (wrap(r) if wrap else r) for r in self.replicas}
        self.net = Network(nodes, observer=self._observe)
        self.audit = AuditLog(audit_path, self.committee, self.chain_id) if audit_path else None
        self._objections: dict[str, dict[int, Objection]] = defaultdict(dict)
        self._notices: dict[tuple[int, bytes], dict[int, Committed]] = defaultdict(dict)
        self._next_height = 1
        self._ready: dict[int, Committed] = {}
        self.committed: dict[str, dict] = {}  # vid -> certificate
        self._closed: set[str] = set()

    def _observe(self, src: str, dest: int, msg) -> None:
        if isinstance(msg, Objection) and msg.sender not in self._objections[msg.vid]:
            data = objection_bytes(msg.vid, msg.digest, msg.probability, msg.band)
            if self.committee.verify(msg.sender, msg.sig, data):
                self._objections[msg.vid][msg.sender] = msg

    def _collect(self) -> None:
        """Blocks reported committed by f+1 validators (so by an honest one) are final."""
        for _, _src, m in self.net.client:
            if isinstance(m, Committed) and m.block.hash == m.qc.block_hash and m.height >= self._next_height:
                box = self._notices[(m.height, m.block.hash)]
                box[m.sender] = m
                if len(box) == self.committee.f + 1:
                    self._ready[m.height] = m
        self.net.client.clear()
        while self._next_height in self._ready:
            m = self._ready.pop(self._next_height)
            qc = m.qc
            data = vote_bytes(qc.view, qc.block_hash)
            if not all(self.committee.verify(s, sig, data) for s, sig in qc.sigs):
                raise AssertionError("f+1 validators reported a block with an invalid certificate")
            cert = {"chain": self.chain_id, "height": m.height, "view": qc.view,
                    "block_hash": qc.block_hash.hex(), "signers": qc.signers,
                    "signatures": [s.hex() for _, s in qc.sigs]}
            for v in m.block.payload:
                self.committed[v.vid] = cert
            if self.audit is not None:
                self.audit.append(m.height, m.block, qc)
            self._next_height += 1
        for key in [k for k in self._notices if k[0] < self._next_height]:  # final: later notices ignored
            del self._notices[key]

    def _open(self, vids: list[str]) -> list[str]:
        f = self.committee.f
        return [v for v in vids if v not in self.committed and len(self._objections.get(v, ())) <= f]

    def process(self, requests: list[Request]) -> tuple[list[CommittedVerdict], list[DisputedVerdict]]:
        """Order a batch of proposed verdicts; every request ends committed or disputed."""
        disputed: list[DisputedVerdict] = []
        fresh, seen = [], set()
        for r in requests:
            if r.vid in seen or r.vid in self._closed:
                disputed.append(DisputedVerdict(r.verdict, "duplicate"))
            else:
                seen.add(r.vid)
                fresh.append(r)
        vids = [r.vid for r in fresh]
        self.net.submit(fresh)
        timeouts = 0
        while True:
            self.net.drain()
            self._collect()
            if not self._open(vids) or timeouts >= self.cfg.max_timeouts:
                break
            deadlines = [r.deadline for r in self.replicas if r.deadline is not None]
            if not deadlines:
                break
            self.net.now = max(self.net.now, min(deadlines))
            self.net.tick()
            timeouts += 1
        committed = [CommittedVerdict(r.verdict, self.committed.pop(r.vid)) for r in fresh
                     if r.vid in self.committed]
        done = {c.verdict.vid for c in committed}
        lost = [r for r in fresh if r.vid not in done]
        for r in lost:
            objs = self._objections.pop(r.vid, {})
            reason = "objected" if len(objs) > self.committee.f else "no_quorum"
            seen_objections = [{"validator": o.sender, "probability": o.probability, "band": o.band,
                                "signature": o.sig.hex()} for _, o in sorted(objs.items())]
            disputed.append(DisputedVerdict(r.verdict, reason, seen_objections))
        if lost:
            self.net.withdraw([r.vid for r in lost])
            self.net.drain()
        for r in fresh:
            self._objections.pop(r.vid, None)
        self._closed.update(vids)
        if self.audit is not None:
            self.audit.flush()
        return committed, disputed

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
