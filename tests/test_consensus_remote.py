"""The job's consensus stage against four real validator processes (ONNX model) over TCP:
verdicts commit with certificates that verify and an audit log ``verify_log`` accepts; one
validator SIGKILLed mid-stream changes nothing (the other three commit every verdict, none
twice, within a bound); started again it takes the chain over from its peers and votes
again, so a second, different validator can be killed; forged proposals and validators
whose model disagrees are disputed ``objected``, too few validators ``no_quorum``; a client
started again continues the audit log; a validator set started from nothing is a new chain."""

from __future__ import annotations

import os
import time
from statistics import median

import pytest

from pipelines.consensus.audit import committed_before, verify_log
from pipelines.consensus.cluster import LinearPredictor, make_requests
from pipelines.consensus.crypto import Committee
from pipelines.consensus.messages import vote_bytes
from pipelines.consensus.remote import RemoteValidators
from pipelines.consensus.tcp import load_config
from pipelines.inference import DEFAULT_MODEL_DIR, OnnxPredictor
from pipelines.service.validators import ValidatorProcesses, write_validator_config


@pytest.fixture(scope="module")
def onnx():
    p = OnnxPredictor()
    p.load_model()
    return p


def reqs(onnx, n, seed, start_ms, wrong=frozenset()):
    return make_requests(n, onnx, t=onnx.info.seq_len, n_features=onnx.info.n_features, seed=seed,
                         start_ms=start_ms, wrong=set(wrong))


def assert_certificate(cert: dict, committee: Committee):
    assert len(set(cert["signers"])) >= committee.quorum
    data = vote_bytes(cert["view"], bytes.fromhex(cert["block_hash"]))
    pairs = zip(cert["signers"], cert["signatures"], strict=True)
    assert all(committee.verify(s, bytes.fromhex(g), data) for s, g in pairs)


def wait_for(check, timeout_s: float) -> float | None:
    """Seconds until ``check()`` held, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if check():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def log_text(vp: ValidatorProcesses, rid: int) -> str:
    with open(vp.children[rid].log_path, errors="replace") as fh:
        return fh.read()


class Stream:
    """Batches of requests through the validators, everything they answered kept."""

    def __init__(self, rv: RemoteValidators, onnx):
        self.rv, self.onnx = rv, onnx
        self.committed, self.disputed, self.latency = [], [], []
        self.sent = 0

    def run(self, batches: int, size: int = 10, wrong=frozenset()):
        out_c, out_d = [], []
        for _ in range(batches):
            batch = reqs(self.onnx, size, seed=self.sent, start_ms=10_000 * self.sent, wrong=wrong)
            self.sent += size
            t0 = time.perf_counter()
            c, d = self.rv.process(batch)
            self.latency.append(time.perf_counter() - t0)
            assert len(c) + len(d) == size
            out_c += c
            out_d += d
        self.committed += out_c
        self.disputed += out_d
        return out_c, out_d


@pytest.fixture
def cluster(tmp_path):
    path = str(tmp_path / "validators.json")
    write_validator_config(path, 4, predictor="onnx", model_dir=DEFAULT_MODEL_DIR, base_timeout=0.3,
                           max_block=64, commit_timeout_s=10.0)
    vp = ValidatorProcesses(path, 4, str(tmp_path / "logs")).start()
    try:
        assert vp.wait_ready(60), "validators did not start"
        yield path, vp
    finally:
        vp.stop()


def test_commits_through_a_killed_and_restarted_validator_and_a_second_kill(tmp_path, onnx, cluster):
    path, vp = cluster
    out = str(tmp_path / "out")
    rv = RemoteValidators(path, out)
    committee = rv.committee
    try:
        assert rv.wait_connected(4, 20)
        s = Stream(rv, onnx)
        # all four up; two forged proposals (a probability flipped) are disputed, signed objections attached
        c, d = s.run(6, wrong={3, 7})
        all_up = list(s.latency)
        assert len(c) == 48 and {x.reason for x in d} == {"objected"} and len(d) == 12
        for x in d:
            assert len(x.objections) >= committee.f + 1
            assert all(abs(o["probability"] - (1 - x.verdict.probability)) < 1e-4 for o in x.objections)
        # SIGKILL validator 1 (a leader every fourth view) mid-stream: the other three commit everything
        vp.kill(1)
        c, d = s.run(15)
        assert len(c) == 150 and not d, [x.reason for x in d]
        # start it again: it takes the chain over from its peers and is sent the open requests
        assert vp.restart_dead() == [1]
        t_restart = time.monotonic()
        c, d = s.run(5)  # the stream goes on while it starts
        assert len(c) == 50 and not d
        assert wait_for(lambda: "caught up" in log_text(vp, 1) and 1 in rv.connected(), 60) is not None, \
            log_text(vp, 1)
        rejoin = time.monotonic() - t_restart
        caught_up = [x for x in log_text(vp, 1).splitlines() if "caught up" in x][-1]
        # kill a different validator: 0, 1 and 3 are left, so every new QC needs validator 1's vote
        vp.kill(2)
        c, d = s.run(15)
        assert len(c) == 150 and not d, [x.reason for x in d]
        late = [x.certificate for x in c[-50:]]
        assert all(sorted(cert["signers"]) == [0, 1, 3] for cert in late), {tuple(x["signers"]) for x in late}
        # nothing lost, nothing twice; every certificate verifies; the audit log holds exactly these
        vids = [x.verdict.vid for x in s.committed]
        assert len(vids) == len(set(vids)) == s.sent - len(s.disputed)
        for x in s.committed:
            assert_certificate(x.certificate, committee)
        rv.close()
        report = verify_log(rv.audit_path, committee)
        assert report.ok and report.verdicts == len(s.committed), report
        assert set(committed_before(out)) == set(vids)
        one_down = s.latency[6:21] + s.latency[26:]
        print(f"\nlatency per batch of 10: all four up median {median(all_up) * 1000:.0f} ms, max "
              f"{max(all_up) * 1000:.0f} ms; one down median {median(one_down) * 1000:.0f} ms, max "
              f"{max(one_down) * 1000:.0f} ms; validator 1 voted again {rejoin:.1f} s after its restart "
              f"({caught_up})")
        assert max(s.latency) < 5.0

        # a client started again on the same output continues its audit log; one on a new output
        # fetches the whole chain (from height 1) before its first commit
        for k, where in enumerate((out, str(tmp_path / "other"))):
            rv2 = RemoteValidators(path, where)
            c, d = rv2.process(reqs(onnx, 10, seed=900 + k, start_ms=9_000_000_000 + 1_000_000 * k))
            assert len(c) == 10 and not d
            rv2.close()
            rep = verify_log(rv2.audit_path, committee)
            assert rep.ok, rep
            assert rep.verdicts == len(s.committed) + 10 * (k + 1)
        # a third validator down (two of four left): no quorum, disputed within the timeout
        vp.kill(3)
        rv3 = RemoteValidators(path, out, timeout_s=1.5)
        t0 = time.perf_counter()
        c, d = rv3.process(reqs(onnx, 5, seed=999, start_ms=8_000_000_000))
        took = time.perf_counter() - t0
        rv3.close()
        assert not c and [x.reason for x in d] == ["no_quorum"] * 5 and took < 3.0
        assert verify_log(rv3.audit_path, committee).ok
    finally:
        rv.close()


def test_validators_whose_model_disagrees_object_and_the_verdicts_are_disputed(tmp_path, onnx):
    """Two of four validators run another model (f+1 = 2 disagree): every verdict is disputed
    ``objected`` at once (the objections reach the client), with their signed objections; a
    verdict submitted twice is a ``duplicate``."""
    path = str(tmp_path / "validators.json")
    write_validator_config(path, 4, predictors=["onnx", "onnx", "linear", "linear"], base_timeout=0.3)
    vp = ValidatorProcesses(path, 4, str(tmp_path / "logs")).start()
    rv = None
    try:
        assert vp.wait_ready(60)
        rv = RemoteValidators(path, str(tmp_path / "out"), timeout_s=20)
        assert rv.wait_connected(4, 20)
        batch = reqs(onnx, 20, seed=1, start_ms=0)
        t0 = time.perf_counter()
        c, d = rv.process(batch + batch[:1])
        took = time.perf_counter() - t0
        assert not c and len(d) == 21 and took < 10, took
        assert [x.reason for x in d].count("duplicate") == 1
        objected = [x for x in d if x.reason == "objected"]
        assert len(objected) == 20
        linear = LinearPredictor()
        for x in objected:
            assert {o["validator"] for o in x.objections} >= {2, 3}
            mine = {o["validator"]: o["probability"] for o in x.objections}
            i = batch.index(next(r for r in batch if r.vid == x.verdict.vid))
            want = float(linear.run_inference(batch[i].x[None], batch[i].dt[None])[0])
            assert abs(mine[2] - want) < 1e-6
        c, d = rv.process(batch[:2])  # answered already: never twice
        assert not c and [x.reason for x in d] == ["duplicate"] * 2
    finally:
        if rv is not None:
            rv.close()
        vp.stop()


def test_a_validator_set_started_from_nothing_is_a_new_chain(tmp_path):
    """One audit log per chain: a second client of the same log (another process) leaves it
    to the first and takes it over when that one is gone. All four validators killed at once:
    ``restart_dead`` starts them on a new chain id, and the client, seeing the config change,
    goes on committing into a new audit log."""
    path = str(tmp_path / "validators.json")
    write_validator_config(path, 4, predictor="linear", base_timeout=0.3)
    vp = ValidatorProcesses(path, 4, str(tmp_path / "logs")).start()
    rv = None
    lin = LinearPredictor()
    out = str(tmp_path / "out")
    try:
        assert vp.wait_ready(30)
        rv = RemoteValidators(path, out, timeout_s=10)
        first = rv.chain_id
        # another writer of the same log (another process, say) waits for the lock, then takes over
        other = RemoteValidators(path, audit_path=rv.audit_path, timeout_s=10)
        c, d = rv.process(make_requests(30, lin, seed=1))
        assert len(c) == 30 and not d
        c, d = other.process(make_requests(30, lin, seed=3, start_ms=50_000_000))
        assert len(c) == 30 and not d and other.stats["log_takeovers"] == 0
        rv.close()  # the writer goes: the next call takes the log over, with the blocks it had not logged
        c, d = other.process(make_requests(30, lin, seed=4, start_ms=60_000_000))
        assert len(c) == 30 and not d and other.stats["log_takeovers"] == 1
        rv = RemoteValidators(path, out, timeout_s=10)  # a new session waits for the lock in turn
        c, d = other.process(make_requests(30, lin, seed=5, start_ms=70_000_000))
        assert len(c) == 30 and not d
        other.close()  # ... and takes over a log that is ahead of it
        c, d = rv.process(make_requests(30, lin, seed=6, start_ms=80_000_000))
        assert len(c) == 30 and not d and rv.stats["log_takeovers"] == 1
        rep = verify_log(rv.audit_path)
        assert rep.ok and rep.verdicts == 150, rep
        for r in range(4):
            vp.kill(r)
        assert vp.restart_dead() == [0, 1, 2, 3]
        assert load_config(path)["chain_id"] != first
        assert vp.wait_ready(30)
        c, d = rv.process(make_requests(30, lin, seed=2, start_ms=10_000_000))
        assert len(c) == 30 and not d, [x.reason for x in d]
        assert rv.chain_id != first and rv.stats["chain_restarts"] == 1
        rv.close()
        logs = sorted(os.listdir(os.path.join(out, "audit")))
        assert len(logs) == 2
        for name in logs:
            assert verify_log(os.path.join(out, "audit", name)).ok
        assert len(committed_before(out)) == 180
    finally:
        if rv is not None:
            rv.close()
        vp.stop()


def test_the_job_builds_remote_validators_from_validators_at(tmp_path):
    from pipelines.cli import build_parser
    from pipelines.config import load_run_config

    path = str(tmp_path / "validators.json")
    write_validator_config(path, 4, predictor="linear")
    a = build_parser().parse_args(["run", "--input", "x", "--validators-at", path,
                                   "--validators-timeout", "3"])
    assert a.validators_at == path and a.validators_timeout_s == 3.0
    cfg = load_run_config(None, input="x", validators_at=path, validators_timeout_s=3.0)
    spec = cfg.consensus_spec()
    assert spec.remote_config == os.path.abspath(path) and len(spec.backends) == 4
    stage = spec.build(str(tmp_path / "out"))
    try:
        assert isinstance(stage, RemoteValidators) and stage.timeout_s == 3.0 and stage.replicas == []
    finally:
        stage.close()
    # persistent keys (aura audit keygen): the config names the directory, each validator reads its own
    from pipelines.consensus.keys import write_keys
    from pipelines.consensus.tcp import _signer

    keys = str(tmp_path / "keys")
    committee = write_keys(keys, 4)
    kcfg = write_validator_config(str(tmp_path / "v2.json"), 4, predictor="linear", key_dir=keys)
    assert "private_keys" not in kcfg and _signer(kcfg, 2).public == committee.public_keys[2]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"  # inline private keys: owner only
    with pytest.raises(ValueError, match="risk bands"):
        load_run_config(None, input="x", validators_at=path, risk_bands="0.2,0.8").consensus_spec()
    with pytest.raises(ValueError, match="validators"):
        load_run_config(None, input="x", validators_at=str(tmp_path / "missing.json")).consensus_spec()


def test_aura_run_commits_through_validator_processes(tmp_path, cluster, capsys):
    """``aura run --validators-at``: the streaming job (which builds its consensus DoFn more
    than once) commits every prediction through the validator processes, into one audit log
    that ``aura audit verify`` accepts against the validators' committee."""
    import glob
    import json

    from pipelines.cli import main
    from pipelines.predictions import read_predictions

    path, _ = cluster
    tele, out = str(tmp_path / "sim"), tmp_path / "run"
    assert main(["simulate", "--agents", "20", "--duration", "60", "--seed", "5", "--tenants", "2",
                 "--out", tele]) == 0
    assert main(["run", "--input", tele, "--mode", "streaming", "--out", str(out), "--no-progress",
                 "--no-graph", "--max-block", "8", "--validators-at", path]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predictions"] > 0 and summary["reconciles"]
    assert summary["consensus"] == {"committed": summary["predictions"]}
    logs = glob.glob(str(out / "audit" / "*.ndjson"))
    assert [os.path.basename(x) for x in logs] == [f"chain-{load_config(path)['chain_id']}.ndjson"]
    committee = Committee(tuple(bytes.fromhex(k) for k in load_config(path)["public_keys"]))
    rep = verify_log(logs[0], committee)
    assert rep.ok and rep.verdicts == summary["predictions"], rep
    rows = read_predictions(str(out)).to_pylist()
    assert {json.loads(r["certificate"])["chain"] for r in rows} == {load_config(path)["chain_id"]}
    capsys.readouterr()
    assert main(["audit", "verify", str(out)]) == 0
