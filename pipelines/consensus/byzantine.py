"""Byzantine validator behaviours for the simulator: each wraps an honest replica (so it has
the protocol state and keys) and lies on top of it."""

from __future__ import annotations

from pipelines.consensus.messages import (
    QC,
    Block,
    NewView,
    Objection,
    Proposal,
    Submit,
    Vote,
    objection_bytes,
    proposal_bytes,
    vote_bytes,
)
from pipelines.consensus.replica import ALL, Replica
from pipelines.consensus.validator import Opinion, Validator

KINDS = ("silent", "badsig", "wrong", "equivocate", "leader")


class Silent:
    """Crashed or mute: receives everything, sends nothing."""

    def __init__(self, replica: Replica):
        self.r, self.rid = replica, replica.rid

    def on_message(self, msg, now):
        return []

    def on_tick(self, now):
        return []


class _Liar:
    def __init__(self, replica: Replica):
        self.r, self.rid = replica, replica.rid

    def on_message(self, msg, now):
        return self.lie(self.r.on_message(msg, now), msg)

    def on_tick(self, now):
        return self.lie(self.r.on_tick(now), None)

    def lie(self, outs, incoming):
        return outs


def _corrupt(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 0x01]) + sig[1:]


class BadSignatures(_Liar):
    """Follows the protocol but every signature it sends is invalid."""

    def lie(self, outs, incoming):
        bad = []
        for dest, m in outs:
            if isinstance(m, Proposal | Vote | NewView | Objection):
                m = type(m)(**{**{k: getattr(m, k) for k in m.__slots__}, "sig": _corrupt(m.sig)})
            bad.append((dest, m))
        return bad


class _AgreesWithAnything(Validator):
    def __init__(self, inner: Validator):
        super().__init__(inner.predictor, inner.bands, inner.epsilon)

    def assess(self, requests):
        ops = super().assess(requests)
        return {vid: Opinion(True, o.probability, o.band, True) for vid, o in ops.items()}

    def check(self, verdict, opinion):
        return True


class WrongVerdicts(_Liar):
    """Votes for anything, proposes flipped probabilities, and objects to every correct verdict."""

    def __init__(self, replica: Replica):
        super().__init__(replica)
        replica.validator = _AgreesWithAnything(replica.validator)

    def lie(self, outs, incoming):
        r = self.r
        out = []
        for dest, m in outs:
            if isinstance(m, Proposal):
                b = m.block
                flipped = tuple(type(v)(v.tenant, v.window_start, v.window_end, v.pane_index,
                                        1.0 - v.probability, r.validator.bands.band(1.0 - v.probability),
                                        v.digest) for v in b.payload)
                nb = Block(b.view, b.parent, b.justify, flipped, b.proposer)
                m = Proposal(nb, r.rid, r.signer.sign(proposal_bytes(nb.hash)))
            out.append((dest, m))
        if isinstance(incoming, Submit):
            for req in incoming.requests:
                v = req.verdict
                p = 1.0 - v.probability
                band = r.validator.bands.band(p)
                sig = r.signer.sign(objection_bytes(v.vid, v.digest, p, band))
                out.append((ALL, Objection(v.vid, v.digest, p, band, r.rid, sig)))
        return out


class Equivocator(_Liar):
    """As leader, sends one block to even replicas and a different one to odd replicas; votes
    for every proposal it sees (conflicting ones included), to every replica."""

    def lie(self, outs, incoming):
        r = self.r
        out = []
        for dest, m in outs:
            if isinstance(m, Proposal) and dest == ALL:
                b = m.block
                alt = Block(b.view, b.parent, b.justify, b.payload[:-1] if b.payload else (), b.proposer)
                alt_p = Proposal(alt, r.rid, r.signer.sign(proposal_bytes(alt.hash)))
                for rid in range(r.c.n):
                    out.append((rid, m if rid % 2 == 0 else alt_p))
                continue
            out.append((dest, m))
        if isinstance(incoming, Proposal):
            b = incoming.block
            out.append((ALL, Vote(b.view, b.hash, r.rid, r.signer.sign(vote_bytes(b.view, b.hash)))))
        return out


class MaliciousLeader(_Liar):
    """Honest as a follower; as leader proposes forks from genesis, blocks with a forged QC,
    or blocks that repeat (already ordered) verdicts, in turn."""

    def lie(self, outs, incoming):
        r = self.r
        out = []
        for dest, m in outs:
            if isinstance(m, Proposal):
                b = m.block
                kind = b.view % 3
                if kind == 0:
                    nb = Block(b.view, r.genesis.hash, QC(0, r.genesis.hash, ()), b.payload, r.rid)
                elif kind == 1:
                    sig = r.signer.sign(vote_bytes(b.view - 1, b.parent))
                    fake = QC(b.view - 1, b.parent, tuple((r.rid, sig) for _ in range(r.c.quorum)))
                    nb = Block(b.view, b.parent, fake, b.payload, r.rid)
                else:
                    old = tuple(v for _, blk, _ in r.log[-3:] for v in blk.payload)
                    nb = Block(b.view, b.parent, b.justify, b.payload + b.payload[:1] + old, r.rid)
                m = Proposal(nb, r.rid, r.signer.sign(proposal_bytes(nb.hash)))
            out.append((dest, m))
        return out


def byzantine(kind: str, replica: Replica):
    """Wrap an honest replica in one of ``KINDS``."""
    return {"silent": Silent, "badsig": BadSignatures, "wrong": WrongVerdicts, "equivocate": Equivocator,
            "leader": MaliciousLeader}[kind](replica)
