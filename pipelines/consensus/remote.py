"""The job's consensus stage against validator processes: the same ``process(requests) ->
(committed, disputed)`` and ``close()`` as the in-process ``ConsensusStage``, talking over
TCP to the n = 3f+1 validators of ``pipelines/consensus/tcp.py`` (one process each, started
by ``pipelines.service.validators.ValidatorProcesses`` or by hand).

- I/O: one background thread runs an asyncio loop with a connection to every validator. A
  validator that is down is skipped; its connection is retried (50 ms doubling to 1 s) and,
  once it is back, it is sent every request still open (a restarted validator has none) and
  asked for the blocks committed since the last final one this client holds (``catchup``).
- Committed: a block is final when f+1 validators report it (so at least one honest one
  committed it), its QC is 2f+1 valid signatures of the committee, and it extends the
  previous final block. Each committed verdict carries the same certificate dict as the
  in-process stage ``{chain, height, view, block_hash, signers, signatures}``, and every
  final block goes to the audit log ``<out>/audit/chain-<chain id>.ndjson`` (``AuditLog``:
  ``verify_log`` and ``committed_before`` read it). A client started again on the same
  output continues that log (a torn last line is cut) and fetches the heights it missed.
- Disputed: ``objected`` when f+1 validators sent signed objections (the validators forward
  their own to clients), ``no_quorum`` when a verdict is not final within ``timeout_s``
  (the config's ``commit_timeout_s``, 10 s by default), ``duplicate`` for a verdict
  submitted twice, ``conflicts_with_committed`` when the chain already holds the same window
  with another verdict. Disputed verdicts are withdrawn from the validators.
- One chain, one log: every ``RemoteValidators`` of the same config and output in a process
  shares one session (connections, chain, audit log; an engine may build its DoFn or
  operator several times); across processes, the one holding the log's ``flock`` writes it
  and another takes over (from the log's last block) once that one is gone.
- A validator set that lost every state (all killed) starts its chain again: a new chain id
  in the config (``ValidatorProcesses`` writes one), or, with the same id, f+1 validators
  reporting blocks that contradict the log. Either way the client starts a new audit log
  (the next segment ``chain-<id>.<k>.ndjson`` for the same id) and logs a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import logging
import os
import re
import threading
import time
from collections import Counter, defaultdict, deque

import orjson

from pipelines.consensus.audit import AUDIT_DIR, AuditLog
from pipelines.consensus.messages import (
    Block,
    Committed,
    Objection,
    Request,
    Submit,
    Verdict,
    Withdraw,
    from_wire,
    genesis,
    objection_bytes,
)
from pipelines.consensus.stage import CommittedVerdict, DisputedVerdict
from pipelines.consensus.tcp import catchup_frame, committee_of, frame, load_config, qc_certifies, read_frame

log = logging.getLogger("aura.consensus.remote")

KEEP_HASHES = 256  # final block hashes kept (the first and the latest): a restarted chain is recognised
SUBMIT_CHUNK = 256  # requests per Submit frame when a validator is sent the open requests again
MAX_BACKLOG = 64 << 20  # bytes queued for a validator that reads nothing: its connection is dropped
MAX_UNCLAIMED = 100_000  # final verdicts kept for a later process() (a job started again), oldest dropped


def audit_segments(out_dir: str, chain_id: str) -> list[str]:
    """The audit logs of one chain in ``<out>/audit/``, oldest first: ``chain-<id>.ndjson``,
    then ``chain-<id>.1.ndjson``, ... (a chain its validators started again)."""
    d = os.path.join(out_dir, AUDIT_DIR)
    base = os.path.join(d, f"chain-{chain_id}.ndjson")
    pat = re.compile(re.escape(f"chain-{chain_id}.") + r"(\d+)\.ndjson$")
    found = glob.glob(os.path.join(d, f"chain-{glob.escape(chain_id)}.*.ndjson"))
    numbered = sorted((int(m.group(1)), p) for p in found if (m := pat.search(os.path.basename(p))))
    return ([base] if os.path.exists(base) else []) + [p for _, p in numbered]


def audit_tip(path: str, chain_id: str, repair: bool = False) -> tuple[int, bytes, dict[int, bytes]] | None:
    """(height, block hash) of the last block in an audit log of the chain (height 0: the
    header only), and the hashes of its first ``KEEP_HASHES`` blocks. A torn last line (a
    killed writer) is ignored, and cut off with ``repair`` (its writer). None: no log yet."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    end = data.rfind(b"\n") + 1  # whole lines end with a newline; after it: torn or nothing
    if repair and end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
        log.warning("audit log %s: cut a torn last line (%d bytes)", path, len(data) - end)
    lines = data[:end].split(b"\n")[:-1]
    if not lines:
        return None
    head = orjson.loads(lines[0])
    if head.get("type") != "header" or head.get("chain_id") != chain_id:
        raise ValueError(f"{path} is not the audit log of chain {chain_id}")
    first = {}
    for line in lines[1:KEEP_HASHES + 1]:
        rec = orjson.loads(line)
        first[int(rec["height"])] = Block.from_dict(rec["block"]).hash
    last = orjson.loads(lines[-1])
    if last.get("type") == "header":
        return 0, genesis(chain_id).hash, first
    return int(last["height"]), Block.from_dict(last["block"]).hash, first


class _Session:
    """One client of a validator set for one audit log: connections, the chain, the log."""

    def __init__(self, config_path: str, out_dir: str | None, audit_path: str | None):
        self.config_path, self.out_dir, self._audit_override = config_path, out_dir, audit_path
        self.cfg = load_config(config_path)
        self._cfg_mtime = os.stat(config_path).st_mtime_ns
        self._seen_cfg = self.cfg  # the latest config the I/O thread read
        self._ports: list[int] | None = None  # ... and its ports, which the connections use at once
        self.n = len(self.cfg["ports"])
        self.host = self.cfg.get("host", "127.0.0.1")
        self.users = 0
        self.closed = False
        self.stats: Counter = Counter()
        self.io: Counter = Counter()  # the I/O thread's: connects, disconnects
        self._state = threading.RLock()  # everything below; the I/O thread only reads _open
        self._open: dict[str, Request] = {}  # submitted, not yet answered: sent again on reconnect
        self._objections: dict[str, dict[int, Objection]] = defaultdict(dict)
        self.committed: dict[str, tuple[Verdict, dict]] = {}  # final in the chain, not yet answered
        self._answered: set[str] = set()  # committed or disputed: a second submission is a duplicate
        self._disputed: set[str] = set()
        self.audit: AuditLog | None = None
        self.audit_path: str | None = None
        self._lock_fd: int | None = None
        self._start_chain(new_segment=False)
        self._inbox: deque = deque()
        self._cv = threading.Condition()  # guards _inbox and _gen
        self._gen = 0  # bumped whenever the inbox was read (a waiter then looks at the answers)
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="aura-validators-io", daemon=True)
        self._thread.start()

    # -- chain and audit log ----------------------------------------------------------------
    def _start_chain(self, new_segment: bool) -> None:
        self.chain_id = self.cfg["chain_id"]
        self.committee = committee_of(self.cfg)
        if self.committee.n != self.n:
            raise ValueError(f"{self.config_path}: {self.committee.n} keys for {self.n} validators")
        self._reports: dict[tuple[int, bytes], dict[int, Committed]] = defaultdict(dict)
        self._ready: dict[int, Committed] = {}
        self._forks: dict[tuple[int, bytes], set[int]] = defaultdict(set)
        self._hashes: dict[int, bytes] = {}
        self._replay_below = 0  # heights below this were final before: logged, not answered again
        path = self._audit_override
        if path is None and self.out_dir is not None:
            d = os.path.join(self.out_dir, AUDIT_DIR)
            segments = audit_segments(self.out_dir, self.chain_id)
            path = segments[-1] if segments else os.path.join(d, f"chain-{self.chain_id}.ndjson")
            if new_segment and segments:
                path = os.path.join(d, f"chain-{self.chain_id}.{len(segments)}.ndjson")
        elif path is not None and new_segment and os.path.exists(path):
            root, ext = os.path.splitext(path)
            path = f"{root}.{self.stats['chain_restarts']}{ext}"
        self.audit_path = path
        self._next_height, self._prev_hash = 1, genesis(self.chain_id).hash
        self._logged = 0  # the last height in the audit log
        if path is None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        writer = self._try_lock()
        tip = audit_tip(path, self.chain_id, repair=writer)
        if tip is not None:
            self._next_height, self._prev_hash = tip[0] + 1, tip[1]
            self._logged = tip[0]
            self._hashes.update(tip[2])
        if writer:
            self.audit = AuditLog(path, self.committee, self.chain_id)

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _take_over_log(self) -> None:
        """Not writing the audit log (another process held it): write it from now on if that
        one is gone, fetching again the blocks it did not log."""
        if self.audit is not None or self._lock_fd is None or not self._try_lock():
            return
        tip = audit_tip(self.audit_path, self.chain_id, repair=True)
        height, prev = (tip[0], tip[1]) if tip else (0, genesis(self.chain_id).hash)
        self.audit = AuditLog(self.audit_path, self.committee, self.chain_id)
        self._logged = height  # blocks up to here are in the log (it may be ahead of us)
        self.stats["log_takeovers"] += 1
        if height + 1 < self._next_height:  # final here but never logged: fetched and logged again
            self._replay_below = self._next_height
            self._next_height, self._prev_hash = height + 1, prev
            self._reports.clear()
            self._ready.clear()
            self._call(self._broadcast, catchup_frame(self._next_height))

    def _close_log(self) -> None:
        if self.audit is not None:
            self.audit.close()
            self.audit = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _restart_chain(self, why: str, cfg: dict | None = None) -> None:
        """The validators started their chain again (all of them lost their state): a new
        audit log, and every final block of the new chain is fetched from height 1."""
        self.stats["chain_restarts"] += 1
        log.warning("validators at %s: %s; continuing on chain %s in a new audit log", self.config_path, why,
                    (cfg or self.cfg)["chain_id"])
        self._close_log()
        if cfg is not None:
            self.cfg = cfg
        self._start_chain(new_segment=cfg is None or cfg["chain_id"] == self.chain_id)
        self._call(self._broadcast, catchup_frame(self._next_height))

    # -- the I/O thread ---------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        tasks = [self._loop.create_task(self._keep(r)) for r in range(self.n)]
        try:
            self._loop.run_forever()
        finally:
            for t in tasks:
                t.cancel()
            for w in list(self._writers.values()):
                w.close()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _call(self, fn, *args) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to send any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _broadcast(self, data: bytes) -> None:
        for rid, w in list(self._writers.items()):
            if w.is_closing():
                continue
            if w.transport.get_write_buffer_size() > MAX_BACKLOG:  # alive but not reading (frozen)
                log.warning("validator %d reads nothing (%d bytes waiting): connection dropped", rid,
                            w.transport.get_write_buffer_size())
                w.transport.abort()  # its reader ends; reconnecting sends the open requests again
                continue
            w.write(data)

    def _check_config(self) -> None:
        """The validator set's config was rewritten (a new chain, new ports): connections use
        the new ports at once; the caller's thread switches chains when it reaches this point
        of the inbox (what the old chain's validators sent before is theirs)."""
        with contextlib.suppress(OSError, ValueError):
            mtime = os.stat(self.config_path).st_mtime_ns
            if mtime != self._cfg_mtime:
                cfg = load_config(self.config_path)
                self._cfg_mtime = mtime
                if cfg["chain_id"] != self._seen_cfg["chain_id"] or cfg["ports"] != self._seen_cfg["ports"]:
                    self._seen_cfg = cfg
                    self._ports = cfg["ports"]
                    with self._cv:
                        self._inbox.append((None, cfg))
                        self._cv.notify_all()

    async def _keep(self, rid: int) -> None:
        """Keep a connection to validator ``rid``: on each connect ask for the blocks missed and
        send the open requests; every frame read goes to the inbox."""
        delay = 0.05
        while not self._stopping:
            self._check_config()
            ports = self._ports or self.cfg["ports"]
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, ports[rid]), 5.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            writer.transport.set_write_buffer_limits(high=8 << 20)
            self._writers[rid] = writer
            self.io["connects"] += 1
            writer.write(catchup_frame(self._next_height))
            with self._state:
                reqs = list(self._open.values())
            for i in range(0, len(reqs), SUBMIT_CHUNK):
                writer.write(frame(Submit(tuple(reqs[i:i + SUBMIT_CHUNK]))))
            try:
                while True:
                    msg = from_wire(await read_frame(reader))
                    with self._cv:
                        self._inbox.append((rid, msg))
                        self._cv.notify_all()
            except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, TypeError):
                pass
            finally:
                if self._writers.get(rid) is writer:
                    del self._writers[rid]
                writer.close()
            self.io["disconnects"] += 1
            await asyncio.sleep(delay)

    def connected(self) -> list[int]:
        return sorted(r for r, w in list(self._writers.items()) if not w.is_closing())

    # -- what the validators report (under _state) ------------------------------------------
    def _collect(self) -> None:
        with self._cv:
            items = list(self._inbox)
            self._inbox.clear()
            if items:
                self._gen += 1
                self._cv.notify_all()
        for rid, m in items:
            if isinstance(m, Committed):
                self._on_notice(rid, m)
            elif isinstance(m, Objection):
                self._on_objection(m)
            elif rid is None:  # the config changed here
                self._finalize()
                if m["chain_id"] != self.chain_id:
                    self._restart_chain(f"the config names a new chain {m['chain_id']}", m)
                else:
                    self.cfg = m
        self._finalize()

    def _on_objection(self, o: Objection) -> None:
        req = self._open.get(o.vid)
        if req is None or o.digest != req.verdict.digest or o.sender in self._objections.get(o.vid, {}):
            return
        if self.committee.verify(o.sender, o.sig, objection_bytes(o.vid, o.digest, o.probability, o.band)):
            self._objections[o.vid][o.sender] = o
        else:
            self.stats["bad_objection_sig"] += 1

    def _on_notice(self, rid: int, m: Committed) -> None:
        if m.sender != rid:  # a validator speaks for itself only (its connection names it)
            self.stats["bad_sender"] += 1
            return
        h, f = m.height, self.committee.f
        if h < self._next_height:
            known = self._hashes.get(h)
            if known is not None and known != m.block.hash:
                who = self._forks[(h, m.block.hash)]
                who.add(rid)
                if len(who) > f:
                    self._restart_chain(f"{len(who)} validators committed another block at height {h}")
                    self._on_notice(rid, m)
            return
        box = self._reports[(h, m.block.hash)]
        box[rid] = m
        if len(box) == f + 1 and h not in self._ready:
            self._ready[h] = m

    def _finalize(self) -> None:
        """Final blocks in height order: certificates, audit log, verdicts to answer."""
        while self._next_height in self._ready:
            h = self._next_height
            m = self._ready.pop(h)
            if m.block.parent != self._prev_hash:
                self._restart_chain(f"f+1 validators committed a block at height {h} that does not extend "
                                    "the audit log")
                return
            qc = m.qc
            if not qc_certifies(self.committee, m):  # impossible with at most f faulty validators
                log.error("f+1 validators reported block %s at height %d with an invalid certificate",
                          qc.block_hash.hex(), h)
                self.stats["bad_certificate"] += 1
                self._reports.pop((h, m.block.hash), None)
                return
            cert = {"chain": self.chain_id, "height": h, "view": qc.view, "block_hash": qc.block_hash.hex(),
                    "signers": qc.signers, "signatures": [s.hex() for _, s in qc.sigs]}
            if h >= self._replay_below:
                for v in m.block.payload:
                    if v.vid in self._disputed:  # given up on (no_quorum) while its block was in flight
                        self.stats["committed_after_dispute"] += 1
                        log.warning("verdict %s was committed at height %d after it was disputed", v.vid, h)
                    else:
                        self.committed[v.vid] = (v, cert)
                while len(self.committed) > MAX_UNCLAIMED:  # others' verdicts (another client)
                    del self.committed[next(iter(self.committed))]
            if self.audit is not None and h > self._logged:
                self.audit.append(h, m.block, qc)
                self._logged = h
            self._hashes[h] = m.block.hash
            if h - KEEP_HASHES > KEEP_HASHES:
                self._hashes.pop(h - KEEP_HASHES, None)
            self._prev_hash = m.block.hash
            self._next_height += 1
            self.stats["blocks"] += 1
        for key in [k for k in self._reports if k[0] < self._next_height]:
            del self._reports[key]
        if len(self._forks) > 4 * KEEP_HASHES:
            self._forks.clear()

    def _objection_list(self, vid: str) -> list[dict]:
        return [{"validator": o.sender, "probability": o.probability, "band": o.band,
                 "signature": o.sig.hex()} for _, o in sorted(self._objections.get(vid, {}).items())]

    def _answer(self, r: Request) -> CommittedVerdict | DisputedVerdict | None:
        got = self.committed.pop(r.vid, None)
        if got is not None:
            v, cert = got
            if v == r.verdict:
                return CommittedVerdict(r.verdict, cert)
            was = dict(zip(("probability", "band", "digest"), v.canon()[4:]))
            return DisputedVerdict(r.verdict, "conflicts_with_committed",
                                   [{"committed": was, "certificate": cert}])
        if len(self._objections.get(r.vid, ())) > self.committee.f:
            return DisputedVerdict(r.verdict, "objected", self._objection_list(r.vid))
        return None

    # -- the stage --------------------------------------------------------------------------
    def process(self, requests: list[Request], timeout_s: float
                ) -> tuple[list[CommittedVerdict], list[DisputedVerdict]]:
        disputed: list[DisputedVerdict] = []
        fresh, seen = [], set()
        with self._state:
            self._take_over_log()
            for r in requests:
                if r.vid in seen or r.vid in self._answered or r.vid in self._open:
                    disputed.append(DisputedVerdict(r.verdict, "duplicate"))
                else:
                    seen.add(r.vid)
                    fresh.append(r)
            if not fresh:
                return [], disputed
            for r in fresh:
                self._open[r.vid] = r
        self._call(self._broadcast, frame(Submit(tuple(fresh))))
        deadline = time.monotonic() + timeout_s
        answers: dict[str, CommittedVerdict | DisputedVerdict] = {}
        while True:
            with self._state:  # (no other caller reads the inbox until gen is taken)
                self._collect()
                for r in fresh:
                    if r.vid not in answers and (a := self._answer(r)) is not None:
                        answers[r.vid] = a
                with self._cv:
                    gen = self._gen
            left = deadline - time.monotonic()
            if len(answers) == len(fresh) or left <= 0:
                break
            with self._cv:
                if not self._inbox and self._gen == gen:
                    self._cv.wait(min(left, 0.5))
        with self._state:
            for r in fresh:
                if r.vid not in answers:
                    answers[r.vid] = DisputedVerdict(r.verdict, "no_quorum", self._objection_list(r.vid))
            gone = [vid for vid, a in answers.items() if isinstance(a, DisputedVerdict)]
            if gone:
                self._call(self._broadcast, frame(Withdraw(tuple(gone))))
                self._disputed.update(gone)
            for r in fresh:
                self._open.pop(r.vid, None)
                self._objections.pop(r.vid, None)
            self._answered.update(seen)
            if self.audit is not None:
                self.audit.flush()
            committed = [a for r in fresh if isinstance(a := answers[r.vid], CommittedVerdict)]
            disputed += [a for r in fresh if isinstance(a := answers[r.vid], DisputedVerdict)]
            self.stats["committed"] += len(committed)
            self.stats["disputed"] += len(disputed)
        return committed, disputed

    def close(self) -> None:
        """Blocks already final are written; the connections close."""
        if self.closed:
            return
        self.closed = True
        with self._state:
            self._collect()
            self._stopping = True
        self._call(self._loop.stop)
        self._thread.join(10)
        with self._state:
            self._close_log()


_SESSIONS: dict[tuple, _Session] = {}
_SESSIONS_LOCK = threading.Lock()


class RemoteValidators:
    """``process(requests) -> (committed, disputed)`` against validator processes over TCP.

    ``config_path``: the validator set's config (``pipelines.consensus.tcp.write_config``);
    ``out_dir``: the run's output (audit log in ``<out_dir>/audit/``), or ``audit_path``;
    ``timeout_s``: a verdict not final by then is disputed ``no_quorum`` (default: the
    config's ``commit_timeout_s``, else 10 s)."""

    replicas: list = []  # none in this process (the in-process stage's teardown closes theirs)

    def __init__(self, config_path: str, out_dir: str | None = None, *, audit_path: str | None = None,
                 timeout_s: float | None = None):
        where = audit_path or out_dir
        self._key = (os.path.abspath(config_path), os.path.abspath(where) if where else None,
                     audit_path is None)
        with _SESSIONS_LOCK:
            s = _SESSIONS.get(self._key)
            if s is None or s.closed:
                s = _SESSIONS[self._key] = _Session(config_path, out_dir, audit_path)
            s.users += 1
        self.session = s
        self.timeout_s = float(timeout_s if timeout_s is not None else s.cfg.get("commit_timeout_s", 10.0))
        self._closed = False

    def process(self, requests: list[Request]) -> tuple[list[CommittedVerdict], list[DisputedVerdict]]:
        """Order a batch of proposed verdicts; every request ends committed or disputed, within
        ``timeout_s``."""
        if self._closed:
            raise RuntimeError("RemoteValidators.process after close")
        return self.session.process(requests, self.timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _SESSIONS_LOCK:
            s = self.session
            s.users -= 1
            last = s.users == 0
            if last and _SESSIONS.get(self._key) is s:
                del _SESSIONS[self._key]
        if last:
            s.close()

    # -- what the session knows -------------------------------------------------------------
    @property
    def chain_id(self) -> str:
        return self.session.chain_id

    @property
    def committee(self):
        return self.session.committee

    @property
    def audit_path(self) -> str | None:
        return self.session.audit_path

    @property
    def stats(self) -> Counter:
        return self.session.stats

    @property
    def n(self) -> int:
        return self.session.n

    def connected(self) -> list[int]:
        """The validators this client holds a connection to now."""
        return self.session.connected()

    def wait_connected(self, k: int | None = None, timeout_s: float = 30.0) -> bool:
        """Until ``k`` validators (default: all) are connected."""
        k = self.n if k is None else k
        deadline = time.monotonic() + timeout_s
        while len(self.connected()) < k:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
