"""The consensus stage with the real ONNX model: committed verdicts carry verifiable
certificates, broken proposals are disputed with the objections seen, the audit log
verifies end to end and a one-byte change is caught; wired into `aura run`."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.consensus.audit import verify_log
from pipelines.consensus.byzantine import Silent
from pipelines.consensus.cluster import make_requests
from pipelines.consensus.crypto import Committee
from pipelines.consensus.messages import vote_bytes
from pipelines.consensus.stage import ConsensusConfig, ConsensusStage
from pipelines.inference import OnnxPredictor
from pipelines.predictions import read_predictions


@pytest.fixture(scope="module")
def onnx():
    p = OnnxPredictor()
    p.load_model()
    return p


class Drifted:
    """A second model version: the same model with a small, deterministic drift."""

    def __init__(self, inner, drift: float):
        self.inner, self.drift = inner, drift

    def run_inference(self, x, dt, model=None):
        return np.clip(self.inner.run_inference(x, dt) + self.drift, 0, 1)


def requests(onnx, n=300, wrong=frozenset({4, 17})):
    return make_requests(n, onnx, t=onnx.info.seq_len, n_features=onnx.info.n_features, wrong=set(wrong))


def assert_certificate(cert: dict, committee: Committee):
    assert len(set(cert["signers"])) >= committee.quorum
    data = vote_bytes(cert["view"], bytes.fromhex(cert["block_hash"]))
    pairs = zip(cert["signers"], cert["signatures"])
    assert all(committee.verify(s, bytes.fromhex(g), data) for s, g in pairs)


def test_commits_with_certificates_disputes_broken_proposals_and_audits(tmp_path, onnx):
    log = str(tmp_path / "audit.ndjson")
    preds = [onnx, onnx, Drifted(onnx, 2e-5), Drifted(onnx, -3e-5)]  # mixed model versions, within epsilon
    stage = ConsensusStage(preds, ConsensusConfig(max_block=64), audit_path=log)
    reqs = requests(onnx)
    committed, disputed = stage.process(reqs[:150])
    c2, d2 = stage.process(reqs[150:])  # the chain continues across calls
    committed += c2
    disputed += d2
    stage.close()
    assert len(committed) + len(disputed) == len(reqs)
    assert {d.verdict.vid for d in disputed} == {reqs[4].vid, reqs[17].vid}
    for d in disputed:
        assert d.reason == "objected" and len(d.objections) == 4  # every validator objected, signed
        assert all(abs(o["probability"] - (1 - d.verdict.probability)) < 1e-4 for o in d.objections)
    for c in committed:
        assert_certificate(c.certificate, stage.committee)
    report = verify_log(log)
    assert report.ok and report.verdicts == len(committed), report.error
    heights = [c.certificate["height"] for c in committed]
    assert heights == sorted(heights)


def test_one_silent_validator_and_one_byte_of_tampering(tmp_path, onnx):
    log = str(tmp_path / "audit.ndjson")
    stage = ConsensusStage([onnx] * 4, ConsensusConfig(max_block=50), audit_path=log,
                           wrap=lambda r: Silent(r) if r.rid == 2 else r)
    reqs = requests(onnx, 200, wrong=())
    committed, disputed = stage.process(reqs)
    stage.close()
    assert len(committed) == 200 and not disputed
    assert all(2 not in c.certificate["signers"] for c in committed)
    assert verify_log(log).ok
    data = bytearray(Path(log).read_bytes())
    for pos in (len(data) // 2, len(data) - 40, 300):  # one byte in a block, a signature, the header
        bad = bytearray(data)
        bad[pos] = ord("0") if bad[pos] != ord("0") else ord("1")
        tampered = tmp_path / f"t{pos}.ndjson"
        tampered.write_bytes(bytes(bad))
        r = verify_log(str(tampered))
        assert not r.ok and r.error, pos


def test_a_broken_validator_backend_is_outvoted_not_obeyed(onnx):
    """One validator computes garbage (f = 1): it objects to everything, nothing is disputed."""
    stage = ConsensusStage([onnx, onnx, Drifted(onnx, 0.5), onnx], ConsensusConfig())
    committed, disputed = stage.process(requests(onnx, 100, wrong=()))
    assert len(committed) == 100 and not disputed


def test_aura_run_commits_every_prediction_with_a_certificate(tmp_path, capsys):
    tele = tmp_path / "sim"
    assert main(["simulate", "--agents", "30", "--duration", "60", "--seed", "5", "--tenants", "2",
                 "--out", str(tele)]) == 0
    keys = str(tmp_path / "keys")
    assert main(["audit", "keygen", keys]) == 0
    for mode in ("batch", "streaming"):
        out = tmp_path / mode
        signing = ["--validator-keys", keys] if mode == "batch" else []  # streaming: fresh keys
        assert main(["run", "--input", str(tele), "--mode", mode, "--out", str(out), "--no-progress",
                     "--no-graph", "--max-block", "8", *signing]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["predictions"] > 0 and summary["reconciles"]
        assert summary["consensus"] == {"committed": summary["predictions"]}
        table = read_predictions(str(out)).to_pylist()
        assert len(table) == summary["predictions"]
        assert all(json.loads(r["certificate"])["signers"] for r in table)
        assert main(["audit", "verify", str(out)]) == 0
        assert main(["audit", "verify", str(out), "--committee", keys]) == (0 if signing else 1)
        log = glob.glob(str(out / "audit" / "*.ndjson"))[0]
        data = bytearray(Path(log).read_bytes())
        data[len(data) // 2] ^= 0x01
        with open(log, "wb") as fh:
            fh.write(bytes(data))
        assert main(["audit", "verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "committed by consensus" in printed and "FAILED" in printed
    assert main(["run", "--input", str(tele), "--out", str(tmp_path / "x"), "--validators", "5"]) == 2
    assert main(["audit", "verify", str(tmp_path / "nothing")]) == 2
    assert os.path.exists(tmp_path / "batch" / "audit")


def test_persistent_keys_pin_the_committee_and_catch_a_log_forged_with_fresh_keys(tmp_path, onnx, capsys):
    from pipelines.consensus.keys import load_committee, load_keys, write_keys

    keys = str(tmp_path / "keys")
    assert main(["audit", "keygen", keys]) == 0
    assert oct(os.stat(os.path.join(keys, "validator-0.key")).st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):  # keys are never overwritten
        write_keys(keys, 4)
    committee, signers = load_keys(keys, 4)
    assert committee == load_committee(keys)
    with pytest.raises(ValueError, match="committee of 4"):
        load_keys(keys, 7)
    reqs = requests(onnx, 60, wrong=())
    real, forged = str(tmp_path / "real.ndjson"), str(tmp_path / "forged.ndjson")
    for path, k in ((real, (committee, signers)), (forged, None)):  # forged: same verdicts, new keys
        stage = ConsensusStage([onnx] * 4, ConsensusConfig(max_block=20), audit_path=path, keys=k)
        committed, _ = stage.process(reqs)
        stage.close()
        assert len(committed) == 60
    assert verify_log(real, committee).ok
    assert verify_log(forged).ok  # self-consistent: its header names its own keys ...
    bad = verify_log(forged, committee)  # ... so only the pin catches it
    assert not bad.ok and "pinned committee" in bad.error
    capsys.readouterr()
    assert main(["audit", "verify", real, "--committee", os.path.join(keys, "committee.json")]) == 0
    assert main(["audit", "verify", forged, "--committee", keys]) == 1
    assert "pinned committee" in capsys.readouterr().out
    # a key file that does not match committee.json is refused
    Path(keys, "validator-3.key").write_text(Path(keys, "validator-2.key").read_text())
    with pytest.raises(ValueError, match="do not match"):
        load_keys(keys, 4)


def test_flink_window_stage_signs_with_the_persistent_keys(tmp_path, capsys):
    """``--validator-keys`` reaches the Flink job's validators too (its window stage builds
    them from the same ``ConsensusSpec``): its audit log verifies against the pinned committee."""
    import random

    from pipelines.consensus.spec import ConsensusSpec
    from pipelines.flink.assemble import join, pack
    from pipelines.flink.window_stage import StageSpec, TenantState, WindowStage
    from pipelines.inference import PredictorSpec
    from pipelines.topology.features import FeatureExtractor
    from tests.conftest import T0
    from tests.test_windowing import random_records

    keys = str(tmp_path / "keys")
    assert main(["audit", "keygen", keys]) == 0
    out = str(tmp_path / "out")
    stage = WindowStage(StageSpec(out, 10_000, 10_000, FeatureExtractor(), PredictorSpec(),
                                  ConsensusSpec(key_dir=keys)))
    recs = random_records(random.Random(1), 200, tenants=("acme",))
    state = TenantState()
    for k in range(3):
        start = int(T0 * 1000) + k * 10_000
        window = join([pack(r) for r in recs if start <= r["event_time"] * 1000 < start + 10_000])
        assert stage.process("acme", start, start + 10_000, *window, state)["committed"]
    stage.close()
    capsys.readouterr()
    assert main(["audit", "verify", out, "--committee", keys]) == 0


class Broken:
    """A validator's model server that is down: every call raises."""

    def run_inference(self, x, dt, model=None):
        raise ConnectionError("triton at 127.0.0.1:1 unreachable")


def test_a_validator_whose_model_fails_abstains_and_the_others_commit(onnx):
    stage = ConsensusStage([onnx, onnx, onnx, Broken()])
    committed, disputed = stage.process(requests(onnx, n=40, wrong=frozenset()))
    assert (len(committed), len(disputed)) == (40, 0)
    assert all(3 not in c.certificate["signers"] for c in committed)
    two_down = ConsensusStage([onnx, onnx, Broken(), Broken()])
    committed, disputed = two_down.process(requests(onnx, n=10, wrong=frozenset()))
    assert (len(committed), len(disputed)) == (0, 10)  # more than f faulty: no quorum, nothing passes
    assert {d.reason for d in disputed} == {"no_quorum"}


def test_an_audit_log_is_never_empty_even_if_the_process_dies_at_once(tmp_path):
    """Found by CI (the twice-killed crash test): a job SIGKILLed right after it opened its
    chain left an empty audit file, which `verify_log` rejects. The header now reaches the
    file, before anything else; a log killed before its first block verifies."""
    import subprocess
    import sys

    path = tmp_path / "audit" / "chain-x.ndjson"
    code = ("import os, signal\nfrom pipelines.consensus.audit import AuditLog\n"
            "from pipelines.consensus.crypto import make_committee\n"
            f"log = AuditLog({str(path)!r}, make_committee(4)[0], 'x')  # alive when killed\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    rc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode
    assert rc == -9
    report = verify_log(str(path))
    assert report.ok and report.blocks == 0, report
