"""The audit log: every committed block, in height order, with its quorum certificate.

One canonical JSON line per record; the first line names the chain and the committee's
public keys. ``verify`` re-checks the whole chain end to end: canonical bytes, heights,
parent hashes, block hashes, and every QC's 2f+1 distinct Ed25519 signatures."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import orjson

from pipelines.consensus.crypto import Committee, canonical
from pipelines.consensus.messages import QC, Block, Verdict, genesis, vote_bytes

AUDIT_DIR = "audit"


class AuditLog:
    """Append-only; one file per chain."""

    def __init__(self, path: str, committee: Committee, chain_id: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._fh = open(path, "ab")  # noqa: SIM115 - kept open for appends, closed in close()
        if self._fh.tell() == 0:  # the header on disk at once: a kill must not leave the file empty
            self._write({"type": "header", "chain_id": chain_id, "committee": committee.to_dict()})
            self._fh.flush()

    def _write(self, rec: dict) -> None:
        self._fh.write(canonical(rec) + b"\n")

    def append(self, height: int, block: Block, qc: QC) -> None:
        self._write({"type": "block", "height": height, "block": block.to_dict(), "qc": qc.to_dict()})

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@dataclass
class AuditReport:
    path: str
    ok: bool
    blocks: int = 0
    verdicts: int = 0
    error: str = ""


def _qc_ok(c: Committee, qc: QC) -> bool:
    signers = qc.signers
    data = vote_bytes(qc.view, qc.block_hash)
    return (len(set(signers)) == len(signers) >= c.quorum
            and all(c.verify(s, sig, data) for s, sig in qc.sigs))


def verify_log(path: str, pinned: Committee | None = None) -> AuditReport:
    """Check one audit log end to end; the first problem found is reported with its line.
    ``pinned``: the committee the log must name (else its header's own keys are trusted)."""
    rep = AuditReport(path, False)
    try:
        with open(path, "rb") as fh:
            lines = fh.read().split(b"\n")
    except OSError as err:
        rep.error = str(err)
        return rep
    if lines and lines[-1] == b"":
        lines.pop()
    try:
        for no, line in enumerate(lines, 1):
            rec = orjson.loads(line)
            if canonical(rec) != line:
                raise ValueError("not in canonical form (edited?)")
            if no == 1:
                if rec.get("type") != "header":
                    raise ValueError("no header")
                committee = Committee.from_dict(rec["committee"])
                if pinned is not None and committee.public_keys != pinned.public_keys:
                    raise ValueError("the log's committee is not the pinned committee (keys replaced?)")
                prev = genesis(rec["chain_id"])
                continue
            if rec.get("type") != "block" or rec["height"] != no - 1:
                raise ValueError(f"expected block at height {no - 1}")
            b, qc = Block.from_dict(rec["block"]), QC.from_dict(rec["qc"])
            if b.parent != prev.hash or b.view <= prev.view:
                raise ValueError("does not extend the previous block")
            j = b.justify
            if j.block_hash != b.parent or j.view != prev.view or not (
                    j.view == 0 and not j.sigs if prev.view == 0 else _qc_ok(committee, j)):
                raise ValueError("bad justify QC")
            if qc.block_hash != b.hash or qc.view != b.view or not _qc_ok(committee, qc):
                raise ValueError("bad quorum certificate")
            rep.blocks += 1
            rep.verdicts += len(b.payload)
            prev = b
    except (ValueError, KeyError, TypeError, IndexError) as err:
        rep.error = f"line {no}: {err}"
        return rep
    if not lines:
        rep.error = "empty log"
        return rep
    rep.ok = True
    return rep


def audit_logs(path: str) -> list[str]:
    """The audit logs of a run directory (``<out>/audit/*.ndjson``), or the file itself."""
    if os.path.isdir(path):
        d = os.path.join(path, AUDIT_DIR) if os.path.isdir(os.path.join(path, AUDIT_DIR)) else path
        return sorted(glob.glob(os.path.join(d, "*.ndjson")))
    return [path]


def committed_before(path: str) -> dict[str, tuple[Verdict, dict]]:
    """Every verdict committed in the audit logs of a run directory: vid -> (verdict, its
    certificate). A last line torn by a crash (not yet whole JSON) is not a commit and is
    skipped; anything else unreadable is an error (``aura audit verify`` names it)."""
    out: dict[str, tuple[Verdict, dict]] = {}
    for log in audit_logs(path):
        with open(log, "rb") as fh:
            lines = fh.read().split(b"\n")
        chain = None
        for no, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                if no >= len(lines) - 1:  # the torn tail of a killed writer
                    break
                raise ValueError(f"{log}: line {no} is not JSON") from None
            if rec.get("type") == "header":
                chain = rec["chain_id"]
                continue
            b, qc = Block.from_dict(rec["block"]), QC.from_dict(rec["qc"])
            cert = {"chain": chain, "height": rec["height"], "view": qc.view,
                    "block_hash": qc.block_hash.hex(), "signers": qc.signers,
                    "signatures": [s.hex() for _, s in qc.sigs]}
            for v in b.payload:
                out.setdefault(v.vid, (v, cert))
    return out
