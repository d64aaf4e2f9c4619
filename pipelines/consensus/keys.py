"""Validator keys that outlive a run, and the committee file that pins them.

``aura audit keygen DIR`` writes one private key per validator (``validator-<i>.key``,
hex, mode 0600) and ``committee.json`` (the public keys). ``aura run --validator-keys DIR``
signs with those keys, and ``aura audit verify --committee DIR/committee.json`` accepts a
log only when its header names exactly that committee: without the pin, a log rewritten
from scratch with fresh keys would verify, since its header carries its own keys.
"""

from __future__ import annotations

import os

import orjson

from pipelines.consensus.crypto import Committee, Signer, make_committee

COMMITTEE_FILE = "committee.json"


def _key_path(key_dir: str, i: int) -> str:
    return os.path.join(key_dir, f"validator-{i}.key")


def write_keys(key_dir: str, n: int) -> Committee:
    """n fresh validator keys and their committee file in ``key_dir`` (never overwritten)."""
    committee, signers = make_committee(n)
    os.makedirs(key_dir, exist_ok=True)
    paths = [_key_path(key_dir, i) for i in range(n)] + [os.path.join(key_dir, COMMITTEE_FILE)]
    existing = [p for p in paths if os.path.exists(p)]
    if existing:
        raise FileExistsError(f"validator keys already exist in {key_dir} ({existing[0]}); "
                              "refusing to overwrite them")
    for i, s in enumerate(signers):
        fd = os.open(_key_path(key_dir, i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(s.private_hex() + "\n")
    with open(os.path.join(key_dir, COMMITTEE_FILE), "wb") as fh:
        fh.write(orjson.dumps(committee.to_dict(), option=orjson.OPT_INDENT_2))
    return committee


def load_committee(path: str) -> Committee:
    """The pinned committee: a committee.json, or a key directory holding one."""
    if os.path.isdir(path):
        path = os.path.join(path, COMMITTEE_FILE)
    try:
        with open(path, "rb") as fh:
            return Committee.from_dict(orjson.loads(fh.read()))
    except FileNotFoundError:
        raise FileNotFoundError(f"no committee file at {path} (make one with 'aura audit keygen DIR')") \
            from None


def load_keys(key_dir: str, n: int) -> tuple[Committee, list[Signer]]:
    """The n validators' keys from ``key_dir``; they must match its committee.json."""
    committee = load_committee(key_dir)
    if committee.n != n:
        raise ValueError(f"{key_dir} holds a committee of {committee.n} validators, the run wants {n}")
    signers = []
    for i in range(n):
        try:
            with open(_key_path(key_dir, i)) as fh:
                signers.append(Signer.from_hex(fh.read().strip()))
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"validator key {_key_path(key_dir, i)}: {err}") from err
    if tuple(s.public for s in signers) != committee.public_keys:
        raise ValueError(f"the keys in {key_dir} do not match its {COMMITTEE_FILE}")
    return committee, signers
