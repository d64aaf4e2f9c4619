"""The same replica code over TCP on loopback: one process per validator (asyncio),
length-prefixed frames (4-byte big-endian length + canonical JSON message).

Run a validator: ``python -m pipelines.consensus.tcp CONFIG.json RID``. The config (written
by ``write_config``) names every validator's port, the chain, the protocol settings, the
predictor (``linear`` | ``onnx`` | ``triton``, with its model directory) and the validators'
keys (each process reads only its own: inline, or ``key_dir`` from ``aura audit keygen``).
A client connects to every validator, sends ``Submit`` frames and reads ``Committed`` notices
(and the validator's own ``Objection``\\ s) back on the same connection; a block is final when
f+1 validators report it (``pipelines.consensus.remote.RemoteValidators`` is the job's client).

Catch-up: a ``catchup`` frame (``catchup_frame(from_height)``) asks a validator for the
``Committed`` notices of every block it committed from that height on. A client uses it to
fill the heights it missed (it was down, or connected late); a validator that starts (again)
with no state uses it to take over the committed chain from its peers in one round trip
(accepted per height when f+1 peers send the same block with a valid QC extending the
previous one), then rejoins the protocol at the others' view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import orjson

from pipelines.consensus.crypto import Committee, Signer, make_committee
from pipelines.consensus.messages import Committed, Objection, Submit, from_wire, to_wire, vote_bytes
from pipelines.consensus.replica import ALL, CLIENT, ProtocolConfig, Replica
from pipelines.consensus.validator import RiskBands, Validator

_LEN = struct.Struct(">I")
MAX_FRAME = 64 << 20
CATCHUP = b'{"t":"catchup"'  # a client/peer frame outside the replica protocol (see catchup_frame)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = _LEN.unpack(await reader.readexactly(4))
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    return await reader.readexactly(n)


def frame(msg) -> bytes:
    data = to_wire(msg)
    return _LEN.pack(len(data)) + data


def catchup_frame(from_height: int, rid: int | None = None) -> bytes:
    """Ask for the Committed notices of heights >= ``from_height`` (``rid``: a peer asks)."""
    data = orjson.dumps({"t": "catchup", "from": int(from_height), "rid": rid})
    return _LEN.pack(len(data)) + data


def free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _predictor(kind: str, model_dir: str | None = None, cfg: dict | None = None):
    """A validator's own model: ``linear`` (tests, benchmarks), ``onnx`` (in-process ONNX
    Runtime on ``model_dir``) or ``triton``; loaded."""
    if kind == "linear":
        from pipelines.consensus.cluster import LinearPredictor

        return LinearPredictor()
    from pipelines.inference import DEFAULT_MODEL_DIR, PredictorSpec

    cfg = cfg or {}
    p = PredictorSpec(kind, model_dir or DEFAULT_MODEL_DIR, cfg.get("triton_url", "127.0.0.1:8001"),
                      cfg.get("triton_protocol", "grpc")).build()
    p.load_model()
    return p


def predictor_kind(cfg: dict, rid: int) -> str:
    """Validator ``rid``'s predictor kind: its entry in ``predictors``, else ``predictor``."""
    kinds = cfg.get("predictors")
    return kinds[rid] if kinds else cfg["predictor"]


def committee_of(cfg: dict) -> Committee:
    return Committee(tuple(bytes.fromhex(k) for k in cfg["public_keys"]))


def bands_of(cfg: dict) -> RiskBands:
    b = cfg.get("bands")
    return RiskBands(tuple(b["cuts"]), tuple(b["names"])) if b else RiskBands()


def _signer(cfg: dict, rid: int) -> Signer:
    if cfg.get("private_keys"):
        return Signer.from_hex(cfg["private_keys"][rid])
    with open(os.path.join(cfg["key_dir"], f"validator-{rid}.key")) as fh:
        return Signer.from_hex(fh.read().strip())


def qc_certifies(committee: Committee, m: Committed) -> bool:
    """The notice's QC is 2f+1 distinct valid signatures for its block (view and hash)."""
    qc = m.qc
    signers = qc.signers
    if (qc.block_hash != m.block.hash or qc.view != m.block.view or len(set(signers)) != len(signers)
            or len(signers) < committee.quorum):
        return False
    data = vote_bytes(qc.view, qc.block_hash)
    return all(committee.verify(s, sig, data) for s, sig in qc.sigs)


class Node:
    """One validator process: a replica behind an asyncio server and peer connections."""

    def __init__(self, cfg: dict, rid: int):
        self.cfg, self.rid = cfg, rid
        self.committee = committee_of(cfg)
        # every block and log entry kept: a validator down for a while takes over the committed
        # chain from its peers (catch-up), clients fill missed heights from the log
        pcfg = ProtocolConfig(base_timeout=cfg["base_timeout"], max_block=cfg["max_block"], keep_log=None,
                              keep_committed=None, max_backoff=cfg.get("max_backoff", 5))
        kind = predictor_kind(cfg, rid)
        validator = Validator(_predictor(kind, cfg.get("model_dir"), cfg), bands_of(cfg), cfg["epsilon"])
        self.replica = Replica(rid, self.committee, _signer(cfg, rid), validator, cfg["chain_id"], pcfg)
        self.peers: dict[int, asyncio.StreamWriter] = {}
        self.clients: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.get_event_loop()
        self._cu: dict[tuple[int, bytes], dict[int, Committed]] = defaultdict(dict)  # peer catch-up replies
        self._cu_ready: dict[int, Committed] = {}
        self._install_due = False
        self._listening_at = 0.0
        self.installed = 0  # blocks taken over from peers

    def now(self) -> float:
        return self.loop.time()

    def handle(self, msg) -> None:
        self.route(self.replica.on_message(msg, self.now()))

    def route(self, outs: list) -> None:
        for dest, msg in outs:
            if dest == CLIENT or (dest == ALL and isinstance(msg, Objection)):
                # clients see the validator's own objections too: a verdict that f+1 validators
                # object to is disputed at once, not after a timeout
                data = frame(msg)
                for w in list(self.clients):
                    if not w.is_closing():
                        w.write(data)
                if dest == CLIENT:
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

    # -- catch-up: serving it -------------------------------------------------------------
    async def _serve_catchup(self, data: bytes, writer) -> None:
        req = orjson.loads(data)
        peer = req.get("rid")
        if peer is None:
            self.clients.add(writer)  # a client that wants the notices from now on too
        log = self.replica.log  # consecutive heights (keep_log=None: from height 1)
        first = log[0][0] if log else 1
        for i, (h, b, qc) in enumerate(log[max(0, int(req["from"]) - first):]):
            if writer.is_closing():
                return
            writer.write(frame(Committed(h, b, qc, self.rid)))
            if i % 32 == 31:
                await writer.drain()  # a long chain does not hold up the protocol

    async def _serve_conn(self, reader, writer) -> None:
        try:
            while True:
                data = await read_frame(reader)
                if data.startswith(CATCHUP):
                    self.loop.create_task(self._serve_catchup(data, writer))
                    continue
                msg = from_wire(data)
                if isinstance(msg, Submit):
                    self.clients.add(writer)
                self.handle(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, TypeError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    # -- catch-up: taking over the committed chain from peers ------------------------------
    def _height(self) -> int:
        return self.replica.heights[self.replica.executed.hash]

    def _on_peer_notice(self, rid: int, m: Committed) -> None:
        if m.sender != rid or m.height <= self._height():
            return
        box = self._cu[(m.height, m.block.hash)]
        box[rid] = m
        if len(box) == self.committee.f + 1:  # so at least one honest peer committed it
            self._cu_ready[m.height] = m
            if not self._install_due:  # once for a burst of replies
                self._install_due = True
                self.loop.call_soon(self._install_ready)

    def _install_ready(self) -> None:
        self._install_due = False
        r = self.replica
        h, prev = self._height(), r.executed
        chain = []
        while h + 1 in self._cu_ready:
            m = self._cu_ready.pop(h + 1)
            if m.block.parent != prev.hash or not qc_certifies(self.committee, m):
                print(f"validator {self.rid}: catch-up block at height {m.height} rejected", flush=True)
                break
            chain.append(m)
            prev, h = m.block, h + 1
        for key in [k for k in self._cu if k[0] <= h]:
            del self._cu[key]
        for k in [k for k in self._cu_ready if k <= h]:
            del self._cu_ready[k]
        if chain:
            self._install(chain)

    def _install(self, chain: list[Committed]) -> None:
        """Committed blocks (consecutive heights above the executed one) become this replica's
        executed chain, as if it had committed them: later proposals extend them."""
        r, now = self.replica, self.now()
        b = r.executed
        for m in chain:
            b = r.blocks.get(m.block.hash)
            if b is None:
                r._store(m.block)
                b = r.blocks[m.block.hash]
            r.log.append((m.height, b, m.qc))
            for v in b.payload:
                r._close(v.vid)
        qc = chain[-1].qc
        r.executed = b
        r.stats["committed_blocks"] += len(chain)
        if b.view > r.locked.view:
            r.locked = b
        r._qc_ok.add((qc.view, qc.block_hash))
        if qc.view > r.high_qc.view:
            r.high_qc = qc
        r._prune()
        r._enter(qc.view + 1, now)
        r._resume(now)
        self.route(r._flush())
        self.installed += len(chain)
        took = self.now() - self._listening_at
        print(f"validator {self.rid}: caught up to height {chain[-1].height} (view {r.view}) from its peers, "
              f"{len(chain)} block(s) ({self.installed} in all), {took:.2f} s after it listened", flush=True)

    async def _read_peer(self, rid: int, reader, writer) -> None:
        """Peers write nothing but catch-up replies on the connections we open to them."""
        try:
            while True:
                msg = from_wire(await read_frame(reader))
                if isinstance(msg, Committed):
                    self._on_peer_notice(rid, msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, TypeError):
            pass
        finally:
            writer.close()

    async def _dial(self, r: int) -> None:
        """Keep a connection to peer r (reconnect with backoff); on each connect, ask it for
        what it committed above our executed block."""
        delay = 0.05
        while True:
            w = self.peers.get(r)
            if w is None or w.is_closing():
                try:
                    reader, w = await asyncio.open_connection("127.0.0.1", self.cfg["ports"][r])
                    w.transport.set_write_buffer_limits(high=8 << 20)
                    self.peers[r] = w
                    w.write(catchup_frame(self._height() + 1, self.rid))
                    self.loop.create_task(self._read_peer(r, reader, w))
                    delay = 0.05
                except OSError:
                    delay = min(delay * 2, 1.0)
            await asyncio.sleep(delay)

    async def run(self) -> None:
        server = await asyncio.start_server(self._serve_conn, "127.0.0.1", self.cfg["ports"][self.rid])
        self._listening_at = self.now()
        for r in range(self.replica.c.n):
            if r != self.rid:
                self.loop.create_task(self._dial(r))
        print(f"validator {self.rid} listening on {self.cfg['ports'][self.rid]} "
              f"(chain {self.cfg['chain_id']}, predictor {predictor_kind(self.cfg, self.rid)})", flush=True)
        async with server:
            while True:
                await asyncio.sleep(0.02)
                self.route(self.replica.on_tick(self.now()))


def write_config(path: str, n: int, predictor: str = "linear", base_timeout: float = 0.5,
                 max_block: int = 256, epsilon: float = 1e-4, seed: bytes | None = None, *,
                 model_dir: str | None = None, predictors: list[str] | None = None,
                 bands: RiskBands | None = None, commit_timeout_s: float = 10.0,
                 key_dir: str | None = None, ports: list[int] | None = None, chain_id: str | None = None,
                 triton_url: str | None = None, triton_protocol: str | None = None,
                 max_backoff: int = 3) -> dict:
    """A validator set's configuration (written atomically, mode 0600: it may hold private keys).

    ``predictor``: every validator's kind (``linear`` | ``onnx`` | ``triton``); ``predictors``:
    one kind per validator instead. ``model_dir``: the ONNX model (default: the committed one).
    ``key_dir``: persistent keys from ``aura audit keygen`` (else fresh ones, or from ``seed``,
    written inline). ``commit_timeout_s``: how long a client waits for a verdict's commit
    before it is disputed ``no_quorum``; keep it above ``base_timeout * 2**max_backoff`` (the
    longest a view waits for a dead leader after consecutive timeouts)."""
    if key_dir is not None:
        from pipelines.consensus.keys import load_keys

        committee, _ = load_keys(key_dir, n)
        private = None
    else:
        committee, signers = make_committee(n, seed)
        private = [s.private_hex() for s in signers]
    if predictors is not None and len(predictors) != n:
        raise ValueError(f"{n} validators need {n} predictor kinds, got {predictors}")
    b = bands or RiskBands()
    cfg = {"chain_id": chain_id or f"tcp-{time.time_ns()}", "ports": ports or free_ports(n),
           "host": "127.0.0.1", "predictor": predictor, "predictors": predictors,
           "model_dir": os.path.abspath(model_dir) if model_dir else None,
           "base_timeout": base_timeout, "max_backoff": max_backoff, "max_block": max_block,
           "epsilon": epsilon,
           "bands": {"cuts": list(b.cuts), "names": list(b.names)}, "commit_timeout_s": commit_timeout_s,
           "public_keys": [k.hex() for k in committee.public_keys]}
    if private is not None:
        cfg["private_keys"] = private
    else:
        cfg["key_dir"] = os.path.abspath(key_dir)
    if triton_url:
        cfg["triton_url"] = triton_url
    if triton_protocol:
        cfg["triton_protocol"] = triton_protocol
    save_config(path, cfg)
    return cfg


def save_config(path: str, cfg: dict) -> None:
    """Atomically (a reader never sees half a file)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".validators-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(cfg, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_config(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def start_validators(config_path: str, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "pipelines.consensus.tcp", config_path, str(i)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(n)]


class Client:
    """Submits requests to every validator and collects blocks committed by f+1 of them."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.committee = committee_of(cfg)
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
    cfg = load_config(path)

    async def go():
        await Node(cfg, int(rid)).run()

    asyncio.run(go())


if __name__ == "__main__":
    main()
