"""Ed25519 keys, canonical encoding and SHA-256 hashing for the consensus protocol.

Canonical bytes are compact, key-sorted JSON (orjson): every replica hashes and signs the
same bytes for the same value. Signatures are checked one by one (``cryptography`` has no
batch verification), so a replica verifies each vote and each QC once and caches the result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_RAW = serialization.Encoding.Raw


def canonical(value) -> bytes:
    """Deterministic bytes of a JSON-like value (sorted keys, no whitespace)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def digest_arrays(*arrays) -> str:
    """Hex SHA-256 of numpy arrays' float32 bytes and shapes (the verdict's model inputs)."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a, dtype=np.float32)
        h.update(b"%d:" % a.ndim + b",".join(b"%d" % d for d in a.shape))
        h.update(a.data)
    return h.hexdigest()


class Signer:
    """One validator's private key."""

    def __init__(self, key: Ed25519PrivateKey):
        self._key = key
        self.public = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    @staticmethod
    def generate() -> Signer:
        return Signer(Ed25519PrivateKey.generate())

    @staticmethod
    def from_seed(seed: bytes) -> Signer:
        """A deterministic key (tests, benchmarks): the private key is SHA-256(seed)."""
        return Signer(Ed25519PrivateKey.from_private_bytes(sha256(seed)))

    @staticmethod
    def from_hex(text: str) -> Signer:
        return Signer(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text)))

    def private_hex(self) -> str:
        return self._key.private_bytes(_RAW, serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption()).hex()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


@dataclass(frozen=True)
class Committee:
    """The validators' public keys (index = replica id); n = 3f + 1."""

    public_keys: tuple[bytes, ...]

    def __post_init__(self):
        object.__setattr__(self, "_keys", [Ed25519PublicKey.from_public_bytes(k) for k in self.public_keys])

    @property
    def n(self) -> int:
        return len(self.public_keys)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        return 2 * self.f + 1

    def leader(self, view: int) -> int:
        return view % self.n

    def verify(self, signer: int, sig: bytes, data: bytes) -> bool:
        if not 0 <= signer < self.n or len(sig) != 64:
            return False
        try:
            self._keys[signer].verify(sig, data)
        except InvalidSignature:
            return False
        return True

    def to_dict(self) -> dict:
        return {"n": self.n, "f": self.f, "public_keys": [k.hex() for k in self.public_keys]}

    @staticmethod
    def from_dict(d: dict) -> Committee:
        c = Committee(tuple(bytes.fromhex(k) for k in d["public_keys"]))
        if c.n != d["n"] or c.f != d["f"] or c.n < 4 or c.n != 3 * c.f + 1:
            raise ValueError(f"bad committee: n={d['n']}, f={d['f']}, {c.n} keys")
        return c


def make_committee(n: int, seed: bytes | None = None) -> tuple[Committee, list[Signer]]:
    """n fresh keys (or deterministic ones from ``seed``) and their committee."""
    if n < 4 or (n - 1) % 3:
        raise ValueError(f"validators must be 3f+1 with f >= 1 (4, 7, 10, ...), got {n}")
    signers = [Signer.from_seed(seed + b"/%d" % i) if seed is not None else Signer.generate()
               for i in range(n)]
    return Committee(tuple(s.public for s in signers)), signers
