"""Protocol values and messages, with canonical bytes for hashing, signing and the wire.

A ``Block`` hashes its view, parent, justify QC (view and block hash), proposer and
payload; its hash is computed from its content, never taken from a sender. Signed bytes
are domain-separated (``vote``, ``prop``, ``newv``, ``objc``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import orjson

from pipelines.consensus.crypto import canonical, sha256


@dataclass(frozen=True, slots=True)
class Verdict:
    """One window's prediction as proposed for agreement."""

    tenant: str
    window_start: int  # ms
    window_end: int  # ms
    pane_index: int
    probability: float
    band: str
    digest: str  # hex SHA-256 of the model inputs (x, dt)
    vid: str = field(init=False, repr=False, compare=False)  # tenant|window start|pane

    def __post_init__(self):
        object.__setattr__(self, "vid", f"{self.tenant}|{self.window_start}|{self.pane_index}")

    def canon(self) -> list:
        return [self.tenant, self.window_start, self.window_end, self.pane_index, float(self.probability),
                self.band, self.digest]

    @staticmethod
    def from_canon(v: list) -> Verdict:
        return Verdict(str(v[0]), int(v[1]), int(v[2]), int(v[3]), float(v[4]), str(v[5]), str(v[6]))


@dataclass(frozen=True, slots=True)
class Request:
    """A proposed verdict with the model inputs validators recompute it from."""

    verdict: Verdict
    x: np.ndarray  # (T, F)
    dt: np.ndarray  # (T,)

    @property
    def vid(self) -> str:
        return self.verdict.vid


@dataclass(frozen=True, slots=True)
class QC:
    """Quorum certificate: 2f+1 signatures over (view, block hash)."""

    view: int
    block_hash: bytes
    sigs: tuple[tuple[int, bytes], ...]

    @property
    def signers(self) -> list[int]:
        return [s for s, _ in self.sigs]

    def to_dict(self) -> dict:
        return {"view": self.view, "block_hash": self.block_hash.hex(), "signers": self.signers,
                "signatures": [sig.hex() for _, sig in self.sigs]}

    @staticmethod
    def from_dict(d: dict) -> QC:
        pairs = zip(d["signers"], d["signatures"], strict=True)
        sigs = tuple((int(s), bytes.fromhex(g)) for s, g in pairs)
        return QC(int(d["view"]), bytes.fromhex(d["block_hash"]), sigs)


@dataclass(frozen=True)
class Block:
    view: int
    parent: bytes
    justify: QC
    payload: tuple[Verdict, ...]
    proposer: int
    hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        body = canonical([self.view, self.parent.hex(), self.justify.view, self.justify.block_hash.hex(),
                          self.proposer, [v.canon() for v in self.payload]])
        object.__setattr__(self, "hash", sha256(body))

    def to_dict(self) -> dict:
        return {"view": self.view, "parent": self.parent.hex(), "justify": self.justify.to_dict(),
                "payload": [v.canon() for v in self.payload], "proposer": self.proposer}

    @staticmethod
    def from_dict(d: dict) -> Block:
        return Block(int(d["view"]), bytes.fromhex(d["parent"]), QC.from_dict(d["justify"]),
                     tuple(Verdict.from_canon(v) for v in d["payload"]), int(d["proposer"]))


def genesis(chain_id: str) -> Block:
    """The chain's root (view 0); ``QC(0, genesis.hash, ())`` is the only QC without signatures."""
    root = sha256(b"aura-genesis/" + chain_id.encode())
    return Block(0, root, QC(0, root, ()), (), -1)


# -- signed bytes ---------------------------------------------------------------------------
def vote_bytes(view: int, block_hash: bytes) -> bytes:
    return b"vote" + view.to_bytes(8, "big") + block_hash


def proposal_bytes(block_hash: bytes) -> bytes:
    return b"prop" + block_hash


def newview_bytes(view: int, qc: QC) -> bytes:
    return b"newv" + view.to_bytes(8, "big") + qc.view.to_bytes(8, "big") + qc.block_hash


def objection_bytes(vid: str, digest: str, probability: float, band: str) -> bytes:
    return b"objc" + canonical([vid, digest, float(probability), band])


# -- messages -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Proposal:
    block: Block
    sender: int
    sig: bytes


@dataclass(frozen=True, slots=True)
class Vote:
    view: int
    block_hash: bytes
    sender: int
    sig: bytes


@dataclass(frozen=True, slots=True)
class NewView:
    """Sent on a view timeout: the new view and the sender's highest QC."""

    view: int
    high_qc: QC
    sender: int
    sig: bytes


@dataclass(frozen=True, slots=True)
class Objection:
    """A validator's signed disagreement with a proposed verdict, with its own result."""

    vid: str
    digest: str
    probability: float
    band: str
    sender: int
    sig: bytes


@dataclass(frozen=True, slots=True)
class BlockRequest:
    block_hash: bytes
    sender: int


@dataclass(frozen=True, slots=True)
class BlockResponse:
    block: Block
    sender: int


@dataclass(frozen=True, slots=True)
class Sync:
    """A QC shown to a replica that timed out (it may lack the QC that commits a block)."""

    qc: QC
    sender: int


@dataclass(frozen=True, slots=True)
class Submit:
    """Client -> validator: proposed verdicts with their inputs."""

    requests: tuple[Request, ...]


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Client -> validator: give up on these verdicts (reported as disputed)."""

    vids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Committed:
    """Validator -> client: a block it committed, with the block's QC."""

    height: int
    block: Block
    qc: QC
    sender: int


# -- wire (TCP): canonical JSON, bytes as hex, arrays as base64 -------------------------------
def _arr(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def _unarr(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=np.float32).reshape(d["shape"])


def to_wire(msg) -> bytes:
    if isinstance(msg, Proposal):
        d = {"t": "prop", "block": msg.block.to_dict(), "sender": msg.sender, "sig": msg.sig.hex()}
    elif isinstance(msg, Vote):
        d = {"t": "vote", "view": msg.view, "hash": msg.block_hash.hex(), "sender": msg.sender,
             "sig": msg.sig.hex()}
    elif isinstance(msg, NewView):
        d = {"t": "newv", "view": msg.view, "qc": msg.high_qc.to_dict(), "sender": msg.sender,
             "sig": msg.sig.hex()}
    elif isinstance(msg, Objection):
        d = {"t": "objc", "vid": msg.vid, "digest": msg.digest, "p": msg.probability, "band": msg.band,
             "sender": msg.sender, "sig": msg.sig.hex()}
    elif isinstance(msg, BlockRequest):
        d = {"t": "breq", "hash": msg.block_hash.hex(), "sender": msg.sender}
    elif isinstance(msg, BlockResponse):
        d = {"t": "bres", "block": msg.block.to_dict(), "sender": msg.sender}
    elif isinstance(msg, Sync):
        d = {"t": "sync", "qc": msg.qc.to_dict(), "sender": msg.sender}
    elif isinstance(msg, Submit):
        d = {"t": "submit", "requests": [{"v": r.verdict.canon(), "x": _arr(r.x), "dt": _arr(r.dt)}
                                         for r in msg.requests]}
    elif isinstance(msg, Withdraw):
        d = {"t": "withdraw", "vids": list(msg.vids)}
    elif isinstance(msg, Committed):
        d = {"t": "committed", "height": msg.height, "block": msg.block.to_dict(), "qc": msg.qc.to_dict(),
             "sender": msg.sender}
    else:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return orjson.dumps(d)


def from_wire(data: bytes):
    """Decode a frame; raises ValueError (or KeyError/TypeError) on garbage."""
    d = orjson.loads(data)
    t = d["t"]
    if t == "prop":
        return Proposal(Block.from_dict(d["block"]), int(d["sender"]), bytes.fromhex(d["sig"]))
    if t == "vote":
        return Vote(int(d["view"]), bytes.fromhex(d["hash"]), int(d["sender"]), bytes.fromhex(d["sig"]))
    if t == "newv":
        return NewView(int(d["view"]), QC.from_dict(d["qc"]), int(d["sender"]), bytes.fromhex(d["sig"]))
    if t == "objc":
        return Objection(d["vid"], d["digest"], float(d["p"]), d["band"], int(d["sender"]),
                         bytes.fromhex(d["sig"]))
    if t == "breq":
        return BlockRequest(bytes.fromhex(d["hash"]), int(d["sender"]))
    if t == "bres":
        return BlockResponse(Block.from_dict(d["block"]), int(d["sender"]))
    if t == "sync":
        return Sync(QC.from_dict(d["qc"]), int(d["sender"]))
    if t == "submit":
        return Submit(tuple(Request(Verdict.from_canon(r["v"]), _unarr(r["x"]), _unarr(r["dt"]))
                            for r in d["requests"]))
    if t == "withdraw":
        return Withdraw(tuple(d["vids"]))
    if t == "committed":
        return Committed(int(d["height"]), Block.from_dict(d["block"]), QC.from_dict(d["qc"]),
                         int(d["sender"]))
    raise ValueError(f"unknown message type {t!r}")
