"""The same replica code as four validator processes over loopback TCP: verdicts commit,
and keep committing after one validator process is killed (SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal

from pipelines.consensus.cluster import make_requests
from pipelines.consensus.tcp import Client, start_validators, write_config
from pipelines.inference import OnnxPredictor


def test_four_processes_commit_and_survive_a_killed_validator(tmp_path):
    cfg_path = str(tmp_path / "cluster.json")
    cfg = write_config(cfg_path, 4, predictor="onnx", base_timeout=0.3, max_block=64)
    procs = start_validators(cfg_path, 4)
    onnx = OnnxPredictor()
    onnx.load_model()
    first = make_requests(100, onnx, t=onnx.info.seq_len, n_features=onnx.info.n_features, seed=1)
    second = make_requests(100, onnx, t=onnx.info.seq_len, n_features=onnx.info.n_features, seed=2,
                           start_ms=10_000_000)

    async def scenario():
        client = Client(cfg)
        await client.connect()
        await client.submit(first)
        assert await client.wait_for({r.vid for r in first}, 60.0), "no commits with all four up"
        os.kill(procs[1].pid, signal.SIGKILL)  # the leader of views 1, 5, 9, ...
        procs[1].wait()
        await client.submit(second)
        ok = await client.wait_for({r.vid for r in second}, 60.0)
        client.close()
        return ok, client

    try:
        ok, client = asyncio.run(scenario())
        assert ok, "verdicts stopped committing after one validator was killed"
        heights = sorted(client.final)
        assert heights == list(range(1, len(heights) + 1))
        late = [h for h, m in client.final.items() if any(v.vid == second[0].vid for v in m.block.payload)]
        assert all(1 not in client.final[h].qc.signers for h in late)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
