"""The same replica code over TCP on loopback: one process per validator (asyncio),
length-prefixed frames (4-byte big-endian length + canonical JSON message).

Run a validator: ``python -m pipelines.consensus.tcp CONFIG.json RID``. The config names
every validator's port, the chain, the protocol settings and the validator's private key
(each process reads only its own). A client connects to every validator, sends ``Submit``
frames and reads ``Committed`` notices back on the same connection; a block is final when
f+1 validators report it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import time

from pipelines.consensus.crypto import Committee, Signer, make_committee
from pipelines.consensus.messages import Committed, Submit, from_wire, to_wire
from pipelines.consensus.replica import ALL, CLIENT, ProtocolConfig, Replica
from pipelines.consensus.validator import Validator

_LEN = struct.Struct(">I")
MAX_FRAME = 64 << 20


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = _LEN.unpack(await reader.readexactly(4))
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    return await reader.readexactly(n)


def frame(msg) -> bytes:
    data = to_wire(msg)
    return _LEN.pack(len(data)) + data


def free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _predictor(kind: str):
    if kind == "linear":
        from pipelines.consensus.cluster import LinearPredictor

        return LinearPredictor()
    from pipelines.inference import PredictorSpec

    p = PredictorSpec(kind).build()
    p.load_model()
    return p


class Node:
    """One validator process: a replica behind an asyncio server and peer connections."""

    def __init__(self, cfg: dict, rid: int):
        self.cfg, self.rid = cfg, rid
        committee = Committee(tuple(bytes.fromhex(k) for k in cfg["public_keys"]))
        signer = Signer.from_hex(cfg["private_keys"][rid])
        # every block kept: a validator down for a while must be able to fetch all it missed
        # (no state transfer yet); the in-process stage, where no replica lags, prunes
        pcfg = ProtocolConfig(base_timeout=cfg["base_timeout"], max_block=cfg["max_block"], keep_log=0,
                              keep_committed=None)
        validator = Validator(_predictor(cfg["predictor"]), epsilon=cfg["epsilon"])
        self.replica = Replica(rid, committee, signer, validator, cfg["chain_id"], pcfg)
        self.peers: dict[int, asyncio.StreamWriter] = {}
        self.clients: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.get_event_loop()

    def now(self) -> float:
        return self.loop.time()

    def handle(self, msg) -> None:
        self.route(self.replica.on_message(msg, self.now()))

    def route(self, outs: list) -> None:
        for dest, msg in outs:
            if dest == CLIENT:
                data = frame(msg)
                for w in list(self.clients):
                    w.write(data)
                continue
            targets = range(self.replica.c.n) if dest == ALL else (dest,)
            data = None
            for r in targets:
                if r == self.rid:
                    self.loop.call_soon(self.handle, msg)
                    continue
                w = self.peers.get(r)
                if w is not None and not w.is_closing():
                    data = data or frame(msg)
                    w.write(data)

    async def _serve_conn(self, reader, writer) -> None:
        try:
            while True:
                msg = from_wire(await read_frame(reader))
                if isinstance(msg, Submit):
                    self.clients.add(writer)
                self.handle(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, TypeError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    async def _dial(self, r: int) -> None:
        """Keep a connection to peer r (reconnect with backoff)."""
        delay = 0.05
        while True:
            w = self.peers.get(r)
            if w is None or w.is_closing():
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", self.cfg["ports"][r])
                    w.transport.set_write_buffer_limits(high=8 << 20)
                    self.peers[r] = w
                    delay = 0.05
                except OSError:
                    delay = min(delay * 2, 1.0)
            await asyncio.sleep(delay)

    async def run(self) -> None:
        server = await asyncio.start_server(self._serve_conn, "127.0.0.1", self.cfg["ports"][self.rid])
        for r in range(self.replica.c.n):
            if r != self.rid:
                self.loop.create_task(self._dial(r))
        print(f"validator {self.rid} listening on {self.cfg['ports'][self.rid]}", flush=True)
        async with server:
            while True:
                await asyncio.sleep(0.02)
                self.route(self.replica.on_tick(self.now()))


def write_config(path: str, n: int, predictor: str = "linear", base_timeout: float = 0.5,
                 max_block: int = 256, epsilon: float = 1e-4, seed: bytes | None = None) -> dict:
    committee, signers = make_committee(n, seed)
    cfg = {"chain_id": f"tcp-{time.time_ns()}", "ports": free_ports(n), "predictor": predictor,
           "base_timeout": base_timeout, "max_block": max_block, "epsilon": epsilon,
           "public_keys": [k.hex() for k in committee.public_keys],
           "private_keys": [s.private_hex() for s in signers]}
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    return cfg


def start_validators(config_path: str, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "pipelines.consensus.tcp", config_path, str(i)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(n)]


class Client:
    """Submits requests to every validator and collects blocks committed by f+1 of them."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.committee = Committee(tuple(bytes.fromhex(k) for k in cfg["public_keys"]))
        self.writers: list = []
        self.reports: dict[tuple[int, bytes], set[int]] = {}
        self.final: dict[int, Committed] = {}
        self.final_at: dict[int, float] = {}
        self._event = asyncio.Event()

    async def connect(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for port in self.cfg["ports"]:
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            self.writers.append(writer)
            asyncio.get_event_loop().create_task(self._read(reader))

    async def _read(self, reader) -> None:
        try:
            while True:
                m = from_wire(await read_frame(reader))
                if isinstance(m, Committed):
                    who = self.reports.setdefault((m.height, m.block.hash), set())
                    who.add(m.sender)
                    if len(who) == self.committee.f + 1 and m.height not in self.final:
                        self.final[m.height] = m
                        self.final_at[m.height] = time.perf_counter()
                        self._event.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def submit(self, requests) -> None:
        data = frame(Submit(tuple(requests)))
        for w in self.writers:
            if not w.is_closing():
                w.write(data)
                with contextlib.suppress(ConnectionError):
                    await w.drain()

    def committed_vids(self) -> dict[str, int]:
        return {v.vid: h for h, m in self.final.items() for v in m.block.payload}

    async def wait_for(self, vids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not vids <= self.committed_vids().keys():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        for w in self.writers:
            w.close()


def main(argv: list[str] | None = None) -> None:
    path, rid = (argv or sys.argv[1:])[:2]
    with open(path) as fh:
        cfg = json.load(fh)

    async def go():
        await Node(cfg, int(rid)).run()

    asyncio.run(go())


if __name__ == "__main__":
    main()
