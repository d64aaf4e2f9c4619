"""Chained HotStuff (Yin et al., PODC 2019) as a deterministic, transport-free state machine.

``on_message(msg, now)``, ``submit(requests, now)`` and ``on_tick(now)`` return the messages
to send as ``(destination, message)``: a replica id, ``ALL`` (every replica, the sender
included) or ``CLIENT``. No clocks, threads or randomness inside: the same code runs in the
in-process simulator and behind the asyncio TCP transport.

- A leader per view (``view mod n``) proposes a block: a batch of verdicts, its parent and the
  parent's QC (``justify``). Replicas vote once per view, for a block that extends their
  locked block or whose QC is newer than the lock, and only if every verdict agrees with
  their own recomputation. Votes go to every replica; any 2f+1 of them form a QC. (Sent only
  to the next leader, a commit would need four honest leaders in a row - blocks in views v,
  v+1, v+2 and the QC of v+2 formed by leader v+3 - which round-robin over n = 4 with one
  silent replica never has; broadcast votes need three.)
- A QC for block b2 locks b1 = b2's parent and commits b0 = b1's parent (and its uncommitted
  ancestors) when b0, b1, b2 have consecutive views: the chained three-chain rule.
- Pacemaker: a view times out after ``base * 2**k`` (k consecutive timeouts, capped); the
  replica then broadcasts ``NewView(v+1, highQC)``. f+1 NewViews for higher views pull a
  replica forward; the leader proposes with a QC from the previous view or 2f+1 NewViews.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from pipelines.consensus.crypto import Committee, Signer
from pipelines.consensus.messages import (
    QC,
    Block,
    BlockRequest,
    BlockResponse,
    Committed,
    NewView,
    Objection,
    Proposal,
    Request,
    Submit,
    Sync,
    Vote,
    Withdraw,
    genesis,
    newview_bytes,
    objection_bytes,
    proposal_bytes,
    vote_bytes,
)
from pipelines.consensus.validator import Opinion, Validator

ALL, CLIENT = -1, -2


@dataclass(frozen=True)
class ProtocolConfig:
    base_timeout: float = 1.0  # seconds (simulated or real) before a view times out
    max_backoff: int = 5  # timeouts double up to base * 2**max_backoff
    max_block: int = 256  # verdicts per block
    notify_client: bool = True  # send Committed notices to CLIENT
    # final blocks kept below the executed one, for lagging replicas to fetch; None keeps all
    # (without state transfer, a replica further behind than this can never catch up)
    keep_committed: int | None = 64
    keep_log: int | None = None  # entries kept in ``Replica.log`` (None: all)

    def __post_init__(self):
        if self.keep_committed is not None and self.keep_committed < 3:
            raise ValueError("keep_committed must be at least 3 (a proposal looks 3 blocks back)")


class Replica:
    """One honest validator's protocol state."""

    def __init__(self, rid: int, committee: Committee, signer: Signer, validator: Validator,
                 chain_id: str = "aura", cfg: ProtocolConfig = ProtocolConfig()):
        self.rid, self.c, self.signer, self.validator, self.cfg = rid, committee, signer, validator, cfg
        g = genesis(chain_id)
        self.genesis = g
        self.blocks: dict[bytes, Block] = {g.hash: g}
        self.heights: dict[bytes, int] = {g.hash: 0}
        self.high_qc, self.locked, self.executed = QC(0, g.hash, ()), g, g
        self.view, self.last_voted = 1, 0
        self.timeouts, self.deadline = 0, None
        self.commit_qc: QC | None = None  # the QC that made the latest commit
        self.pending: dict[str, Request] = {}
        self.opinions: dict[str, Opinion] = {}
        self.objections: dict[str, dict[int, Objection]] = defaultdict(dict)
        self.done: set[str] = set()
        self.log: list[tuple[int, Block, QC]] = []  # committed (height, block, its QC)
        self.stats: Counter = Counter()
        self._proposed: set[int] = set()
        self._newview_sent: set[int] = set()
        self._votes: dict[tuple[int, bytes], dict[int, bytes]] = defaultdict(dict)
        self._newviews: dict[int, dict[int, NewView]] = defaultdict(dict)
        self._qc_ok: set[tuple[int, bytes]] = {(0, g.hash)}  # (view, block) with a QC formed or seen
        self._valid_sigs: dict[tuple[int, bytes], set] = defaultdict(set)  # verified vote signatures
        self._seen: set[bytes] = set()  # proposals handled
        self._waiting: dict[bytes, list] = defaultdict(list)  # missing block -> messages
        self._orphans: dict[bytes, Block] = {}
        self._requested: dict[bytes, int] = {}  # block fetched -> view it was last asked for in
        self._awaiting_requests: list[Proposal] = []
        self._out: list = []

    # -- entry points ---------------------------------------------------------------------
    def on_message(self, msg, now: float) -> list:
        handler = {Proposal: self._on_proposal, Vote: self._on_vote, NewView: self._on_newview,
                   Objection: self._on_objection, BlockRequest: self._on_block_request,
                   BlockResponse: self._on_block_response, Submit: self._on_submit, Sync: self._on_sync,
                   Withdraw: self._on_withdraw}.get(type(msg))
        if handler is None:
            self.stats["unknown_message"] += 1
        else:
            handler(msg, now)
        return self._flush()

    def submit(self, requests: list[Request], now: float) -> list:
        return self.on_message(Submit(tuple(requests)), now)

    def on_tick(self, now: float) -> list:
        if self.deadline is None:
            self._arm(now)
        elif now >= self.deadline:
            self.timeouts += 1
            self.stats["timeouts"] += 1
            self._enter(self.view + 1, now)
            self._send_newview(now)
        return self._flush()

    # -- helpers --------------------------------------------------------------------------
    def _send(self, dest: int, msg) -> None:
        self._out.append((dest, msg))

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out

    def _branch(self, tip: Block):
        """Uncommitted blocks from ``tip`` back to (excluding) the executed block."""
        b = tip
        while b.view > self.executed.view and b.hash in self.blocks:
            yield b
            b = self.blocks.get(b.parent)
            if b is None:
                return

    def _proposable(self) -> list[str]:
        tip = self.blocks.get(self.high_qc.block_hash)
        in_flight = {v.vid for b in self._branch(tip) for v in b.payload} if tip else set()
        out = []
        for vid in self.pending:
            op = self.opinions.get(vid)
            if (vid not in in_flight and op is not None and op.agree
                    and len(self.objections.get(vid, ())) <= self.c.f):
                out.append(vid)
                if len(out) >= self.cfg.max_block:
                    break
        return out

    def _uncommitted_payload(self) -> bool:
        tip = self.blocks.get(self.high_qc.block_hash)
        return tip is None or any(b.payload for b in self._branch(tip))

    def _has_work(self) -> bool:
        return self._uncommitted_payload() or bool(self._proposable())

    def _arm(self, now: float) -> None:
        if self._has_work():
            self.deadline = now + self.cfg.base_timeout * 2 ** min(self.timeouts, self.cfg.max_backoff)
        else:
            self.deadline = None

    def _enter(self, view: int, now: float) -> None:
        if view <= self.view:
            return
        self.view = view
        self._arm(now)
        self._refetch()
        for box in (self._votes, self._valid_sigs):  # keyed by (view, ...)
            for key in [k for k in box if k[0] < view - 3]:
                del box[key]
        for v in [v for v in self._newviews if v < view - 3]:  # keyed by view
            del self._newviews[v]
        # votes below the high QC's view are ignored before _qc_ok is consulted; the others
        # are only ever looked up for the current view
        self._qc_ok.difference_update([k for k in self._qc_ok if k[0] < self.high_qc.view])
        self._proposed.difference_update([w for w in self._proposed if w < view])
        self._newview_sent.difference_update([w for w in self._newview_sent if w < view])
        self._maybe_propose(now)

    def _request_block(self, h: bytes, hint: int | None) -> None:
        if h in self._requested or h in self.blocks:
            return
        self._requested[h] = self.view
        if hint is not None and hint != self.rid:
            self._send(hint, BlockRequest(h, self.rid))
        else:
            self._send(ALL, BlockRequest(h, self.rid))

    def _refetch(self) -> None:
        """Ask everyone again, once per view, for blocks still missing (not orphans: their
        missing ancestor is asked for). A request or response lost before GST must not stall a
        replica that others keep pulling into new views before its own timer expires."""
        for h, asked in self._requested.items():
            if asked < self.view and h not in self.blocks and h not in self._orphans:
                self._requested[h] = self.view
                self.stats["refetch"] += 1
                self._send(ALL, BlockRequest(h, self.rid))

    def _qc_valid(self, qc: QC) -> bool:
        """2f+1 distinct valid signatures; each (signer, signature) is verified once."""
        key = (qc.view, qc.block_hash)
        if qc.view == 0:
            return qc.block_hash == self.genesis.hash and not qc.sigs
        signers = [s for s, _ in qc.sigs]
        if len(set(signers)) != len(signers) or len(signers) < self.c.quorum:
            return False
        known = self._valid_sigs[key]
        data = vote_bytes(qc.view, qc.block_hash)
        for pair in qc.sigs:
            if pair not in known:
                if not self.c.verify(pair[0], pair[1], data):
                    return False
                known.add(pair)
        self._qc_ok.add(key)
        return True

    # -- proposals ------------------------------------------------------------------------
    def _maybe_propose(self, now: float) -> None:
        v = self.view
        if self.c.leader(v) != self.rid or v in self._proposed:
            return
        if not (self.high_qc.view == v - 1 or len(self._newviews.get(v, ())) >= self.c.quorum):
            return
        tip = self.blocks.get(self.high_qc.block_hash)
        if tip is None:
            return
        recent = [b for _, b in zip(range(3), self._chain(tip))]
        vids = self._proposable()
        if not vids and not self._uncommitted_payload() and not any(b.payload for b in recent):
            return  # idle: nothing to order, nothing to commit, no recent commit to spread
        self._proposed.add(v)
        block = Block(v, tip.hash, self.high_qc, tuple(self.pending[x].verdict for x in vids), self.rid)
        self.stats["proposed"] += 1
        self._send(ALL, Proposal(block, self.rid, self.signer.sign(proposal_bytes(block.hash))))

    def _chain(self, b: Block):
        while b is not None and b.view > 0:
            yield b
            b = self.blocks.get(b.parent)

    def _on_proposal(self, p: Proposal, now: float) -> None:
        b = p.block
        if b.hash in self._seen:
            return
        if b.view <= self.executed.view:  # stale: never voted, its QC already superseded
            self.stats["stale_proposal"] += 1
            return
        if (p.sender != b.proposer or b.view < 1 or self.c.leader(b.view) != p.sender
                or not self.c.verify(p.sender, p.sig, proposal_bytes(b.hash))):
            self.stats["bad_proposal_sig"] += 1
            return
        if b.parent != b.justify.block_hash or b.justify.view >= b.view or not self._qc_valid(b.justify):
            self.stats["bad_proposal"] += 1
            return
        if b.parent not in self.blocks:
            if b.justify.view < self.executed.view:  # extends a pruned or dead block: never voted
                self.stats["stale_proposal"] += 1
                self._enter(b.view, now)  # as if it had been fetched
                return
            self._waiting[b.parent].append(p)
            self._request_block(b.parent, p.sender)
            return
        if self.blocks[b.parent].view != b.justify.view:
            self.stats["bad_proposal"] += 1
            return
        self._seen.add(b.hash)
        self._store(b)
        self._on_qc(b.justify, now)
        if b.view > self.view:
            self._enter(b.view, now)
        self._try_vote(p, now)
        self._resume(now)

    def _try_vote(self, p: Proposal, now: float) -> None:
        b = p.block
        if b.view != self.view or b.view <= self.last_voted:
            return
        safe = b.justify.view > self.locked.view or any(x.hash == self.locked.hash
                                                         for x in self._chain_to(b, self.locked.view))
        if not safe:
            self.stats["unsafe_proposal"] += 1
            return
        verdict = self._check_payload(b)
        if verdict == "missing":
            self._awaiting_requests.append(p)
            return
        if verdict != "ok":
            self.stats["rejected_block"] += 1
            return
        self.last_voted = b.view
        self._send(ALL, Vote(b.view, b.hash, self.rid, self.signer.sign(vote_bytes(b.view, b.hash))))
        self._enter(b.view + 1, now)

    def _chain_to(self, b: Block, min_view: int):
        while b is not None and b.view >= min_view:
            yield b
            b = self.blocks.get(b.parent)

    def _check_payload(self, b: Block) -> str:
        parent = self.blocks.get(b.parent)
        if parent is None:  # pruned since (unreachable: such a proposal is unsafe to vote for)
            return "stale"
        in_flight = {v.vid for x in self._branch(parent) for v in x.payload}
        seen: set[str] = set()
        missing = False
        for v in b.payload:
            vid = v.vid
            if vid in self.done or vid in in_flight or vid in seen:
                return "duplicate"
            seen.add(vid)
            req = self.pending.get(vid)
            if req is None:
                missing = True
                continue
            if req.verdict != v or not self.validator.check(v, self.opinions.get(vid)):
                return "disagree"
        return "missing" if missing else "ok"

    def _store(self, b: Block) -> None:
        self.blocks[b.hash] = b
        self.heights[b.hash] = self.heights[b.parent] + 1
        self._requested.pop(b.hash, None)
        for child in [o for o in self._orphans.values() if o.parent == b.hash]:
            del self._orphans[child.hash]
            self._store(child)

    # -- QCs, locking, commit -------------------------------------------------------------
    def _on_qc(self, qc: QC, now: float) -> None:
        if qc.view <= self.executed.view:
            # no-op: high_qc, the lock and the view are all newer (its block may be pruned)
            self._maybe_propose(now)
            return
        b2 = self.blocks.get(qc.block_hash)
        if b2 is None:
            self._waiting[qc.block_hash].append(qc)
            self._request_block(qc.block_hash, None)
            return
        if qc.view > self.high_qc.view:
            self.high_qc, self.timeouts = qc, 0
        b1 = self.blocks.get(b2.parent) if b2.view > 0 else None
        if b1 is not None:  # (a missing parent is pruned, so below the lock and executed block)
            if b1.view > self.locked.view:
                self.locked = b1
            b0 = self.blocks.get(b1.parent) if b1.view > 0 else None
            if (b0 is not None and b2.view == b1.view + 1 and b1.view == b0.view + 1
                    and b0.view > self.executed.view):
                self._commit(b0, b1.justify)
                self.commit_qc = qc
                self._prune()
        if qc.view >= self.view:
            self._enter(qc.view + 1, now)
        self._maybe_propose(now)

    def _commit(self, b0: Block, qc0: QC) -> None:
        chain = list(self._branch(b0))[::-1]  # oldest first
        if not chain or self.blocks.get(chain[0].parent) is not self.executed:
            self.stats["conflicting_commit"] += 1  # cannot happen with <= f faulty replicas
            return
        for i, b in enumerate(chain):
            qc = qc0 if i == len(chain) - 1 else chain[i + 1].justify
            h = self.heights[b.hash]
            self.log.append((h, b, qc))
            for v in b.payload:
                self._close(v.vid)
            if self.cfg.notify_client:
                self._send(CLIENT, Committed(h, b, qc, self.rid))
        self.executed = b0
        self.stats["committed_blocks"] += len(chain)
        if self.cfg.keep_log is not None and len(self.log) > self.cfg.keep_log:
            del self.log[:len(self.log) - self.cfg.keep_log]

    def _close(self, vid: str) -> None:
        self.done.add(vid)
        self.pending.pop(vid, None)
        self.opinions.pop(vid, None)
        self.objections.pop(vid, None)

    def _prune(self) -> None:
        """Forget what can no longer matter once ``executed`` is final (at most f faulty).

        Every certified block above the executed one extends it, and our lock is at or above
        it, so a block with a lower view is either final (an ancestor: only lagging replicas
        need it, so the ``keep_committed`` nearest are kept for their BlockRequests) or on a
        dead fork: a child's justify view would be below our lock, and the child would not
        extend the lock, so we never vote for it and it never gets a QC. Stale QCs and
        proposals are no-ops (``_on_qc``, ``_on_proposal``). The executed block, everything at
        or above its view, genesis and whatever a QC, the lock or a pending proposal names
        stay. Messages and fetches waiting on pruned or dead blocks are dropped with them."""
        ev = self.executed.view
        keep_n = self.cfg.keep_committed
        cut = self.heights[self.executed.hash] - keep_n if keep_n is not None else -1
        self._awaiting_requests = [p for p in self._awaiting_requests if p.block.view >= self.view]
        keep = {self.genesis.hash, self.executed.hash, self.locked.hash, self.high_qc.block_hash}
        keep.update(p.block.parent for p in self._awaiting_requests)
        if self.commit_qc is not None:
            keep.add(self.commit_qc.block_hash)
        old = [h for h, b in self.blocks.items() if b.view < ev and self.heights[h] < cut and h not in keep]
        for h in old:
            del self.blocks[h], self.heights[h]
            self._seen.discard(h)

        def live(m) -> bool:  # a waiting QC or proposal that may still have an effect
            if isinstance(m, QC):
                return m.view > ev
            return m.block.view > ev and (m.block.justify.view >= ev or m.block.view > self.view)

        for h in list(self._waiting):
            self._waiting[h] = [m for m in self._waiting[h] if live(m)]
            if not self._waiting[h]:
                del self._waiting[h]
        for h in [h for h, o in self._orphans.items() if o.view < ev]:
            del self._orphans[h]
        wanted = set(self._waiting) | set(self._orphans) | {o.parent for o in self._orphans.values()}
        self._requested = {h: v for h, v in self._requested.items() if h in wanted}

    # -- votes and view change ------------------------------------------------------------
    def _on_vote(self, v: Vote, now: float) -> None:
        if v.view < self.high_qc.view:
            return
        key = (v.view, v.block_hash)
        box = self._votes[key]
        if v.sender in box or key in self._qc_ok:
            return
        if not self.c.verify(v.sender, v.sig, vote_bytes(v.view, v.block_hash)):
            self.stats["bad_vote_sig"] += 1
            return
        box[v.sender] = v.sig
        self._valid_sigs[key].add((v.sender, v.sig))
        if len(box) == self.c.quorum:
            qc = QC(v.view, v.block_hash, tuple(sorted(box.items())))
            self._qc_ok.add(key)
            self._on_qc(qc, now)
            self._maybe_propose(now)

    def _send_newview(self, now: float) -> None:
        v = self.view
        if v in self._newview_sent:
            return
        self._newview_sent.add(v)
        self._send(ALL, NewView(v, self.high_qc, self.rid, self.signer.sign(newview_bytes(v, self.high_qc))))

    def _on_newview(self, m: NewView, now: float) -> None:
        if m.sender in self._newviews.get(m.view, {}):
            return
        if not self.c.verify(m.sender, m.sig, newview_bytes(m.view, m.high_qc)):
            self.stats["bad_newview_sig"] += 1
            return
        if not self._qc_valid(m.high_qc):
            self.stats["bad_newview"] += 1
            return
        self._newviews[m.view][m.sender] = m
        self._on_qc(m.high_qc, now)
        if m.sender != self.rid:  # it timed out: show it our QCs (it may lag behind our commits)
            shown = {m.high_qc.view}
            if m.high_qc.view < self.high_qc.view:
                self._send(m.sender, Sync(self.high_qc, self.rid))
                shown.add(self.high_qc.view)
            # also when its high QC is newer: the QC that committed may certify a block the chain
            # then abandoned, and idle replicas build no new three-chain to commit it there
            if self.commit_qc is not None and self.commit_qc.view not in shown:
                self._send(m.sender, Sync(self.commit_qc, self.rid))
        # f+1 senders in higher views: at least one honest replica timed out there; join them
        top: dict[int, int] = {}
        for w, box in self._newviews.items():
            if w > self.view:
                for s in box:
                    top[s] = max(top.get(s, 0), w)
        if len(top) > self.c.f:
            self._enter(sorted(top.values(), reverse=True)[self.c.f], now)
            self._send_newview(now)
        self._maybe_propose(now)

    # -- requests, objections, block sync -------------------------------------------------
    def _on_submit(self, s: Submit, now: float) -> None:
        fresh = list({r.vid: r for r in s.requests if r.vid not in self.done and r.vid not in self.pending
                      }.values())
        for r, (vid, op) in zip(fresh, self.validator.assess(fresh).items()):
            self.pending[vid] = r
            self.opinions[vid] = op
            if not op.agree:
                sig = self.signer.sign(objection_bytes(vid, r.verdict.digest, op.probability, op.band))
                self._send(ALL, Objection(vid, r.verdict.digest, op.probability, op.band, self.rid, sig))
        waiting, self._awaiting_requests = self._awaiting_requests, []
        for p in waiting:
            self._try_vote(p, now)
        if self.deadline is None:
            self._arm(now)
        self._maybe_propose(now)

    def _on_sync(self, m: Sync, now: float) -> None:
        if self._qc_valid(m.qc):
            self._on_qc(m.qc, now)
        else:
            self.stats["bad_sync"] += 1

    def _on_withdraw(self, w: Withdraw, now: float) -> None:
        for vid in w.vids:
            if vid in self.pending:
                self._close(vid)
        self._arm(now)

    def _on_objection(self, o: Objection, now: float) -> None:
        if o.vid in self.done or o.sender in self.objections.get(o.vid, {}):
            return
        if not self.c.verify(o.sender, o.sig, objection_bytes(o.vid, o.digest, o.probability, o.band)):
            self.stats["bad_objection_sig"] += 1
            return
        self.objections[o.vid][o.sender] = o

    def _on_block_request(self, r: BlockRequest, now: float) -> None:
        b = self.blocks.get(r.block_hash)
        if b is not None and 0 <= r.sender < self.c.n:
            self._send(r.sender, BlockResponse(b, self.rid))

    def _on_block_response(self, r: BlockResponse, now: float) -> None:
        b = r.block
        if b.hash not in self._requested:
            return  # unsolicited: ignore (a requested block is authenticated by its hash)
        if b.parent not in self.blocks:
            if b.view < self.executed.view:  # dead or final, and its ancestors may be pruned
                self._requested.pop(b.hash, None)
                return
            self._orphans[b.hash] = b
            self._request_block(b.parent, r.sender)
            return
        self._store(b)
        self._resume(now)

    def _resume(self, now: float) -> None:
        for h in [h for h in self._waiting if h in self.blocks]:
            for m in self._waiting.pop(h, []):
                if isinstance(m, QC):
                    self._on_qc(m, now)
                else:
                    self._on_proposal(m, now)
