"""Bounded memory on long runs: replicas prune final blocks (keeping ``keep_committed`` for
lagging peers) and per-view bookkeeping, and the stage forgets finalised notices; every
request still commits exactly once, in order, and a replica lagging within the window
catches up."""

from __future__ import annotations

from pipelines.consensus.cluster import LinearPredictor, build_cluster, make_requests
from pipelines.consensus.network import NetConfig, Network
from pipelines.consensus.replica import ProtocolConfig, Replica
from pipelines.consensus.stage import ConsensusConfig, ConsensusStage

PRED = LinearPredictor()
KEEP = 16
CFG = ProtocolConfig(base_timeout=0.2, max_block=8, keep_committed=KEEP)
SLACK = 8  # blocks at or above the executed one (uncommitted tail, a fork or two)


def sizes(r: Replica) -> dict[str, int]:
    return {name: len(getattr(r, name)) for name in (
        "blocks", "heights", "_seen", "_waiting", "_orphans", "_requested", "_votes", "_valid_sigs",
        "_newviews", "_qc_ok", "_proposed", "_newview_sent", "_awaiting_requests")}


def assert_bounded(r: Replica, keep: int = KEEP) -> None:
    s = sizes(r)
    assert s["blocks"] == s["heights"] <= keep + SLACK, s
    assert s["_seen"] <= s["blocks"], s
    assert max(s[k] for k in ("_votes", "_valid_sigs", "_newviews", "_qc_ok")) <= 8, (r.rid, str(s))
    assert max(s[k] for k in ("_waiting", "_orphans", "_requested", "_proposed", "_newview_sent")) <= 4, s


def committed_order(r: Replica) -> list[str]:
    assert [h for h, _, _ in r.log] == list(range(1, len(r.log) + 1))
    return [v.vid for _, b, _ in r.log for v in b.payload]


def stream(net: Network, batches: int, size: int, check) -> list[str]:
    """Submit ``batches`` batches and run each until every replica committed it."""
    vids: list[str] = []
    reps = [nd for nd in net.nodes.values() if isinstance(nd, Replica)]
    for i in range(batches):
        reqs = make_requests(size, PRED, seed=i, start_ms=10_000 * size * i)
        vids += [q.vid for q in reqs]
        net.submit(reqs)
        want = len(vids)
        net.run(net.now + 60.0, stop=lambda w=want: all(len(r.done) == w for r in reps) or check())
        check()
    return vids


def test_long_run_stays_bounded_and_commits_everything_once_in_order():
    net = build_cluster(4, None, NetConfig(seed=1, delay=(0.0, 0.01)), CFG, PRED)
    reps = list(net.nodes.values())
    peak = [0]

    def check() -> bool:
        for r in reps:
            assert_bounded(r)
            peak[0] = max(peak[0], len(r.blocks))
        return False

    vids = stream(net, 20, 150, check)  # 3000 requests, 375 blocks of 8
    for r in reps:
        assert committed_order(r) == vids  # exactly once, in submission order
        assert sum(1 for _, b, _ in r.log if b.payload) == 20 * 19  # (and a few empty ones)
        assert not r.pending and not r.opinions and not r.objections
    assert peak[0] > KEEP  # pruning did happen, at the bound


def test_lagging_replica_catches_up_within_the_window():
    net = build_cluster(4, None, NetConfig(seed=2, delay=(0.0, 0.01), gst=1e9), CFG, PRED)
    reps = list(net.nodes.values())
    lag = net.nodes["3"]
    net.cfg.partitions = [(0.0, 1e9, [{"0", "1", "2"}, {"3"}])]  # replica 3 cut off ...
    reqs = make_requests(400, PRED)
    net.submit(reqs)
    # ... until it lags by a few blocks: it fetches the missing chain one block per round trip
    # while the others go on committing (about one block per round trip) and pruning, so under
    # load the window it can catch up within is about keep_committed / 2
    net.run(200.0, stop=lambda: len(reps[0].log) >= KEEP // 2)
    behind = len(reps[0].log) - len(lag.log)
    assert KEEP // 4 < behind < KEEP, behind
    for r in reps:
        assert_bounded(r)
    net.cfg.partitions, net.cfg.gst = [], net.now  # healed
    net.run(net.now + 200.0, stop=lambda: all(len(r.done) == 400 for r in reps))
    want = [q.vid for q in reqs]
    for r in reps:
        assert committed_order(r) == want
        assert_bounded(r)


def test_replica_lagging_beyond_the_window_does_not_stall_the_others():
    """Blocks pruned everywhere cannot be fetched (no state transfer): the laggard stays
    behind, harmlessly; the other three stay live, safe and bounded."""
    net = build_cluster(4, None, NetConfig(seed=3, delay=(0.0, 0.01), gst=1e9), CFG, PRED)
    reps = list(net.nodes.values())
    lag = net.nodes["3"]
    net.cfg.partitions = [(0.0, 1e9, [{"0", "1", "2"}, {"3"}])]
    net.submit(make_requests(600, PRED))
    net.run(400.0, stop=lambda: len(reps[0].log) >= 3 * KEEP)
    net.cfg.partitions, net.cfg.gst = [], net.now
    net.run(net.now + 300.0, stop=lambda: all(len(r.done) == 600 for r in reps[:3]))
    logs = [[b.hash for _, b, _ in r.log] for r in reps]
    assert all(len(r.done) == 600 for r in reps[:3])
    assert all(x == logs[0][:len(x)] for x in logs)  # safe: the laggard's log is a prefix
    for r in reps[:3]:
        assert_bounded(r)
    assert len(lag.blocks) <= KEEP + SLACK  # (its fetch bookkeeping grows while it is stuck)
    assert lag.stats["conflicting_commit"] == 0


def test_stage_stream_keeps_bounded_state():
    stage = ConsensusStage([PRED] * 4, ConsensusConfig(max_block=8), key_seed=b"mem")
    total = 0
    for i in range(30):
        reqs = make_requests(40, PRED, seed=i, start_ms=10_000 * 40 * i)
        committed, disputed = stage.process(reqs)
        total += len(committed)
        assert len(committed) == 40 and not disputed
        assert len(stage._notices) <= 2 and not stage._ready and not stage.committed
        for r in stage.replicas:
            assert_bounded(r, r.cfg.keep_committed)
            assert len(r.log) <= 3  # keep_log=3: the audit log is the stage's record
    assert total == 1200


def test_keep_committed_none_keeps_every_block_and_rejects_tiny_windows():
    """``None`` (the TCP validators: no state transfer yet) keeps the whole chain."""
    import dataclasses

    import pytest

    with pytest.raises(ValueError, match="at least 3"):
        ProtocolConfig(keep_committed=2)
    net = build_cluster(4, None, NetConfig(seed=3, delay=(0.0, 0.01)),
                        dataclasses.replace(CFG, keep_committed=None), PRED)
    vids = stream(net, 5, 80, lambda: False)  # 400 requests, 50 blocks of 8
    for r in net.nodes.values():
        assert committed_order(r) == vids
        assert len(r.blocks) >= len(r.log) + 1 > 50  # every committed block and genesis
