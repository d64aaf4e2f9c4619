"""OTLP spans -> AURA telemetry records (``schemas/telemetry.v1.json``), per agent per second.

The rules, corner cases and what traces cannot tell are documented in
``schemas/otlp_mapping.md``; this module implements them. In short: a span belongs to the
agent named by ``gen_ai.agent.name`` or else by the resource's ``service.name``, and to the
one-second bucket of its end time. SERVER / CONSUMER spans and in-process ``invoke_agent``
spans are the agent's requests (count, error rate, p50 / p99 latency); client spans and
cross-agent parent/child pairs are the calls. Buckets are sealed by event time per tenant
(watermark = latest span end seen - grace), after which they are final: a span for a sealed
second is dead-lettered as late. Every span received ends in exactly one record or one dead
letter, and the counters say so at every moment.

Engine-neutral and pure: no I/O, no clock (the optional receive time comes from the caller),
the same calls in the same order give the same records.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from pipelines.service.otlp import hex_id
from pipelines.telemetry import MAX_EPOCH_S, DeadLetter
from schemas import tenant_pattern

# Dead-letter reasons.
INVALID_TENANT = "invalid_tenant"
MISSING_SERVICE_NAME = "missing_service_name"
INVALID_AGENT = "invalid_agent"
INVALID_SPAN_ID = "invalid_span_id"
INVALID_TRACE_ID = "invalid_trace_id"
INVALID_SPAN_TIME = "invalid_span_time"
SPAN_IN_FUTURE = "span_in_future"
LATE_SPAN = "late_span"
DUPLICATE_SPAN = "duplicate_span"

# Attributes read (semantic conventions; the GenAI ones are still "Development").
AGENT_NAME = "gen_ai.agent.name"
OPERATION = "gen_ai.operation.name"
ERROR_TYPE = "error.type"
PEER_NAME = "service.peer.name"
PEER_SERVICE = "peer.service"  # deprecated spelling of service.peer.name
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
SERVICE_NAME = "service.name"
TENANT_ATTR = "aura.tenant"
INVOKE_AGENT = "invoke_agent"

MAX_NAME = 256  # agent_id / dst length limit of the contract
MAX_LATENCY_MS = 3_600_000.0  # the contract's latency maximum
_MAX_LATENCY_NS = 3_600_000_000_000
_MAX_END_NS = int(MAX_EPOCH_S) * 1_000_000_000
_ZERO8, _ZERO16 = bytes(8), bytes(16)

_REQUEST_KINDS = frozenset({Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CONSUMER})
_CLIENT_KINDS = frozenset({Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER})
_STATUS_ERROR = Status.STATUS_CODE_ERROR

# Span classes.
REQUEST = 0  # a request of its agent, whatever its parent
CANDIDATE = 1  # in-process invoke_agent with a parent: a request unless the parent is the same agent
CLIENT = 2  # CLIENT / PRODUCER: one outgoing call
OTHER = 3  # anything else: counted in its agent's record, no metric of its own

_ATTR_CODES = {AGENT_NAME: 1, OPERATION: 2, ERROR_TYPE: 3, PEER_NAME: 4, PEER_SERVICE: 5,
               SERVER_ADDRESS: 6, SERVER_PORT: 7}


class _Ref:
    """What the mapping keeps of one accepted span while it may still matter."""

    __slots__ = ("agent", "cls", "j", "dur_ms", "err", "parent_agent", "callee", "peer", "unread")

    def __init__(self, agent: str, cls: int, j: int, dur_ms: float, err: bool, peer: str | None):
        self.agent, self.cls, self.j, self.dur_ms, self.err = agent, cls, j, dur_ms, err
        self.peer = peer  # CLIENT: the callee named by attributes, if any
        self.parent_agent: str | None = None  # set once the parent span is known
        self.callee: str | None = None  # CLIENT: agent of the first child seen in another agent
        self.unread = None  # CLIENT: the protobuf span, when its callee attributes are read lazily

    def is_request(self) -> bool:
        return self.cls == REQUEST or (self.cls == CANDIDATE and self.parent_agent != self.agent)


class _Acc:
    """One (tenant, agent, second) being accumulated."""

    __slots__ = ("n", "durs", "errs", "cands", "clients", "calls")

    def __init__(self):
        self.n = 0  # spans landing in this record
        self.durs: list[float] = []  # request durations (ms), REQUEST spans
        self.errs = 0
        self.cands: list[_Ref] = []  # CANDIDATE spans, decided at seal time
        self.clients: list[_Ref] = []  # CLIENT spans, callee resolved at seal time
        self.calls: dict[str, list] = {}  # dst -> [count, errors, latency sum ms]


class _Tenant:
    """Per-tenant state. Span ids live in two generations (``index`` and ``index_old``; the same
    for children waiting for their parent): the old generation is dropped every retain period
    of sealing progress, so memory holds between one and two periods of spans."""

    __slots__ = ("accs", "src_max", "index", "index_old", "index_gen", "waiting", "waiting_old",
                 "waiting_gen", "crossing", "max_end_ns", "sealed_upto")

    def __init__(self):
        self.accs: dict[int, dict[str, _Acc]] = {}  # bucket -> agent -> accumulator
        self.src_max: dict[str, int] = {}  # source -> latest bucket it has spans in
        self.index: dict[bytes, _Ref] = {}  # trace id + span id -> span
        self.index_old: dict[bytes, _Ref] = {}
        self.index_gen = -1  # sealed_upto when the index generation started
        self.waiting: dict[bytes, list[_Ref]] = {}  # parent key -> children seen before it
        self.waiting_old: dict[bytes, list[_Ref]] = {}
        self.waiting_gen = -1
        self.crossing: list[tuple[int, int, _Ref]] = []  # (first, last bucket open at its end, span)
        self.max_end_ns = 0
        self.sealed_upto = -1  # highest sealed bucket index

    def rotate(self, index_buckets: int, waiting_buckets: int) -> None:
        if self.sealed_upto - self.index_gen >= index_buckets:
            self.index_old, self.index = self.index, {}
            self.index_gen = self.sealed_upto
        if self.sealed_upto - self.waiting_gen >= waiting_buckets:
            self.waiting_old, self.waiting = self.waiting, {}
            self.waiting_gen = self.sealed_upto


@dataclass
class SealResult:
    """Records sealed by one ``seal``/``flush`` and the dead letters since the previous one."""

    records: list[dict]
    dead: list[DeadLetter]


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile of a sorted non-empty list (numpy's default method)."""
    pos = q * (len(xs) - 1)
    lo = int(pos)
    if lo + 1 >= len(xs):
        return xs[-1]
    return xs[lo] + (xs[lo + 1] - xs[lo]) * (pos - lo)


class SpanAggregator:
    """Turns OTLP export requests into sealed per-(tenant, agent, second) telemetry records.

    ``grace_s``: how far behind a tenant's latest span end a second is sealed; it must cover the
    spread of export delays across the tenant's processes (an SDK ``BatchSpanProcessor``
    exports every ``OTEL_BSP_SCHEDULE_DELAY``, 5 s by default). ``retain_s``: span ids stay
    indexed for parent/child links between one and two such periods of sealing progress.
    ``wait_s``: the same for spans whose parent has not arrived yet (a long in-process
    ``invoke_agent`` parent ends long after its children; its call edges need them).
    ``idle_s``: with receive times given to ``add``, every tenant's watermark is at least the
    latest receive time - idle_s, so a tenant that went quiet gets its last seconds sealed.
    ``max_ahead_s``: with a receive time, spans ending more than that after it are
    dead-lettered (clock-skew guard: one such span would push the watermark and make the
    tenant's other spans late).
    """

    def __init__(self, default_tenant: str = "default", grace_s: float = 2.0, bucket_s: float = 1.0,
                 retain_s: float = 10.0, wait_s: float = 60.0, idle_s: float = 10.0,
                 max_ahead_s: float = 300.0):
        self._tenant_re = re.compile(tenant_pattern())
        if not self._tenant_re.fullmatch(default_tenant):
            raise ValueError(f"default tenant {default_tenant!r} does not match {tenant_pattern()}")
        if bucket_s <= 0 or min(grace_s, retain_s, wait_s, idle_s, max_ahead_s) < 0:
            raise ValueError("bucket_s must be > 0; grace_s, retain_s, wait_s, idle_s, max_ahead_s >= 0")
        self.default_tenant = default_tenant
        self._b = int(round(bucket_s * 1e9))
        self._grace = int(round(grace_s * 1e9))
        self._retain_buckets = max(1, -(-int(round(retain_s * 1e9)) // self._b))
        self._wait_buckets = max(1, -(-int(round(wait_s * 1e9)) // self._b))
        self._idle = int(round(idle_s * 1e9))
        self._ahead = int(round(max_ahead_s * 1e9))
        self._integral_ts = self._b % 1_000_000_000 == 0
        self._tenants: dict[str, _Tenant] = {}
        self._valid_tenants: dict[str, bool] = {}
        self._resources: dict[bytes, tuple[str, str | None]] = {}
        self._dead: list[DeadLetter] = []
        self._dead_by_reason: Counter = Counter()
        self._max_received_ns = 0
        self._requests = self._received = self._in_records = self._records = 0

    # ----------------------------------------------------------------------------- counters
    @property
    def counts(self) -> dict:
        """Counters; ``spans_received == spans_in_records + spans_dead_total + spans_pending``
        at every moment (pending: in seconds not sealed yet, summed over them, 0 after flush)."""
        pending = sum(acc.n for st in self._tenants.values() for accs in st.accs.values()
                      for acc in accs.values())
        return {"requests": self._requests, "spans_received": self._received,
                "spans_in_records": self._in_records, "spans_dead": dict(self._dead_by_reason),
                "spans_dead_total": sum(self._dead_by_reason.values()), "spans_pending": pending,
                "records_produced": self._records}

    def pending_sources(self) -> set[str]:
        """Sources (``add``'s ``source``) with spans in a second not sealed yet."""
        return {src for st in self._tenants.values() for src, j in st.src_max.items() if j > st.sealed_upto}

    def seal_state(self) -> dict:
        """What sealing depends on, JSON-ready: per tenant (highest sealed bucket, latest span end
        ns, the buckets the span-id generations started at) and the latest receive time. With
        ``restore_seal_state`` and the pending spans ``add``-ed again (``replay``), a restarted
        aggregator seals the same seconds at the same moments as one that never stopped."""
        return {"max_received_ns": self._max_received_ns,
                "tenants": {name: [st.sealed_upto, st.max_end_ns, st.index_gen, st.waiting_gen]
                            for name, st in sorted(self._tenants.items())}}

    def restore_seal_state(self, state: dict) -> None:
        """Start from ``seal_state`` of an earlier aggregator (this one fresh): spans of the
        seconds it sealed are late (or, in a ``replay``, skipped)."""
        if self._received or self._requests:
            raise RuntimeError("restore_seal_state needs a fresh aggregator")
        self._max_received_ns = int(state.get("max_received_ns", 0))
        for name, (upto, max_end, index_gen, waiting_gen) in state.get("tenants", {}).items():
            st = self._tenants[name] = _Tenant()
            st.sealed_upto, st.max_end_ns = int(upto), int(max_end)
            st.index_gen, st.waiting_gen = int(index_gen), int(waiting_gen)

    def watermark(self, tenant: str) -> float | None:
        """A tenant's event-time watermark (epoch seconds), None before its first span."""
        st = self._tenants.get(tenant)
        if st is None or not st.max_end_ns:
            return None
        return self._watermark_ns(st) / 1e9

    # ---------------------------------------------------------------------------- ingestion
    def _die(self, reason: str, detail: str, source: str, pos: int, span) -> None:
        self._dead.append(DeadLetter(reason, detail, source, pos, span.SerializeToString()))
        self._dead_by_reason[reason] += 1

    def _tenant_ok(self, name: str) -> bool:
        ok = self._valid_tenants.get(name)
        if ok is None:
            ok = self._tenant_re.fullmatch(name) is not None
            if len(self._valid_tenants) < 100_000:
                self._valid_tenants[name] = ok
        return ok

    def _resource(self, resource) -> tuple[str, str | None]:
        """(service.name or "", aura.tenant or None) of a resource, cached by its bytes (every
        export of a process repeats the same resource)."""
        raw = resource.SerializeToString()
        got = self._resources.get(raw)
        if got is None:
            svc, t_name = "", None
            for kv in resource.attributes:
                k = kv.key
                if k == SERVICE_NAME:
                    svc = kv.value.string_value
                elif k == TENANT_ATTR:
                    t_name = kv.value.string_value
            if len(self._resources) >= 10_000:
                self._resources.clear()
            got = self._resources[raw] = (svc, t_name)
        return got

    def add(self, req: ExportTraceServiceRequest, source: str, tenant: str | None = None,
            received_s: float | None = None, replay: Collection[int] | None = None) -> None:
        """Take every span of one export request (``source`` names it in dead letters and in
        ``pending_sources``). Tenant: resource attribute ``aura.tenant``, else ``tenant``, else
        the default. ``received_s``: when the request was received (epoch seconds), optional.

        ``replay``: the request is read again after a restart (``restore_seal_state``) and these
        are the positions dead-lettered when it was first read. Those spans, and the spans of
        seconds already sealed (they are in landed records), are skipped without being counted;
        the others (the spans that were pending) are taken as usual."""
        self._requests += 1
        limit_ns = None
        if received_s is not None:
            rec_ns = int(received_s * 1e9)
            self._max_received_ns = max(self._max_received_ns, rec_ns)
            limit_ns = rec_ns + self._ahead
        pos = 0
        for rs in req.resource_spans:
            svc, t_name = self._resource(rs.resource)
            if t_name is None:
                t_name = tenant if tenant is not None else self.default_tenant
            st = None
            if self._tenant_ok(t_name):
                st = self._tenants.get(t_name)
                if st is None:
                    st = self._tenants[t_name] = _Tenant()
            for ss in rs.scope_spans:
                spans = ss.spans
                n = len(spans)
                if replay is not None:
                    self._replay_spans(st, t_name, spans, svc, limit_ns, source, pos, ss, replay)
                    pos += n
                    continue
                self._received += n
                if st is None:
                    for span in spans:
                        self._die(INVALID_TENANT, f"tenant {t_name[:80]!r} does not match "
                                  f"{self._tenant_re.pattern}", source, pos, span)
                        pos += 1
                elif n:
                    self._add_spans(st, spans, svc, limit_ns, source, pos, ss.SerializeToString())
                    pos += n

    def _replay_spans(self, st: _Tenant | None, t_name: str, spans, svc: str, limit_ns: int | None,
                      source: str, pos: int, ss, skip: Collection[int]) -> None:
        """``add`` of one scope of a request read again (rare: only after a restart), span by span."""
        blob = None
        for p, span in enumerate(spans, start=pos):
            if p in skip or (st is not None and span.end_time_unix_nano // self._b <= st.sealed_upto):
                continue
            self._received += 1
            if st is None:
                self._die(INVALID_TENANT, f"tenant {t_name[:80]!r} does not match "
                          f"{self._tenant_re.pattern}", source, p, span)
                continue
            if blob is None:
                blob = ss.SerializeToString()
            self._add_spans(st, (span,), svc, limit_ns, source, p, blob)

    def _add_spans(self, st: _Tenant, spans, svc: str, limit_ns: int | None, source: str, pos: int,
                   blob: bytes) -> None:
        """The spans of one scope: each accepted into its agent's second or dead-lettered."""
        # Attributes are read only where a wanted key occurs in the scope's bytes at all:
        # iterating protobuf attributes is the costliest part of the mapping.
        scan_all = b"gen_ai." in blob or b"error.type" in blob
        scan_client = scan_all or b"server.address" in blob or b"peer." in blob
        b, link = self._b, self._link
        index, index_old, waiting, waiting_old = st.index, st.index_old, st.waiting, st.waiting_old
        accs_j, crossing = st.accs, st.crossing
        sealed_upto, max_end, max_j = st.sealed_upto, st.max_end_ns, -1
        end_limit = _MAX_END_NS if limit_ns is None else min(limit_ns + 1, _MAX_END_NS)
        last_j, last_agent, acc = None, None, None
        for pos, span in enumerate(spans, start=pos):  # noqa: B020 - the position moves on
            sid, tid = span.span_id, span.trace_id
            start, end = span.start_time_unix_nano, span.end_time_unix_nano
            key = tid + sid
            j = end // b
            if not (len(sid) == 8 and len(tid) == 16 and 0 < start <= end < end_limit and j > sealed_upto
                    and sid != _ZERO8 and tid != _ZERO16) or key in index or key in index_old:
                self._reject(st, span, limit_ns, source, pos)
                continue
            kind = span.kind
            is_client = kind in _CLIENT_KINDS
            err = span.status.code == _STATUS_ERROR
            gen_agent = op = peer = None
            if scan_all:
                gen_agent, op, peer, has_error = _read_attributes(span.attributes, is_client)
                err = err or has_error
            if is_client:
                cls = CLIENT
                if op == INVOKE_AGENT and gen_agent:  # GenAI: a CLIENT invoke_agent names the remote agent
                    agent, peer = svc, (gen_agent if len(gen_agent) <= MAX_NAME else None)
                else:
                    agent = gen_agent or svc
            else:
                peer = None
                agent = gen_agent or svc
                cls = REQUEST if kind in _REQUEST_KINDS else CANDIDATE if op == INVOKE_AGENT else OTHER
            if not agent or len(agent) > MAX_NAME:
                self._reject_agent(agent, source, pos, span)
                continue
            psid = span.parent_span_id
            pkey = tid + psid if len(psid) == 8 and psid != _ZERO8 else None
            if cls == CANDIDATE and pkey is None:
                cls = REQUEST
            dur = end - start
            dur_ms = dur / 1e6 if dur < _MAX_LATENCY_NS else MAX_LATENCY_MS
            ref = _Ref(agent, cls, j, dur_ms, err, peer)
            if is_client and scan_client and not scan_all:
                # only a callee name can be in its attributes: read them at seal time, if no
                # child span in another agent has named the callee by then
                ref.unread = span

            if j != last_j or agent != last_agent:
                accs = accs_j.get(j)
                if accs is None:
                    accs = accs_j[j] = {}
                acc = accs.get(agent)
                if acc is None:
                    acc = accs[agent] = _Acc()
                last_j, last_agent = j, agent
            acc.n += 1
            if cls == REQUEST:
                acc.durs.append(dur_ms)
                if err:
                    acc.errs += 1
            elif cls == CLIENT:
                acc.clients.append(ref)
            elif cls == CANDIDATE:
                acc.cands.append(ref)
            if cls <= CANDIDATE and dur >= (end % b or b):  # open at a bucket end: in_flight
                crossing.append((-(-start // b) - 1, j - 1 if end % b else j - 2, ref))

            if pkey is not None:
                parent = index.get(pkey)
                if parent is None and index_old:
                    parent = index_old.get(pkey)
                if parent is not None:
                    link(st, parent, ref)
                else:
                    w = waiting.get(pkey)
                    if w is None:
                        waiting[pkey] = [ref]
                    else:
                        w.append(ref)
            if waiting:
                kids = waiting.pop(key, None)
                if kids is not None:
                    for kid in kids:
                        link(st, ref, kid)
            if waiting_old:
                kids = waiting_old.pop(key, None)
                if kids is not None:
                    for kid in kids:
                        link(st, ref, kid)
            index[key] = ref
            if end > max_end:
                max_end = end
            if j > max_j:
                max_j = j
        st.max_end_ns = max_end
        if max_j >= 0 and st.src_max.get(source, -1) < max_j:
            st.src_max[source] = max_j

    def _reject(self, st: _Tenant, span, limit_ns: int | None, source: str, pos: int) -> None:
        """Dead-letter a span that failed the fast checks, with the first reason that applies."""
        sid, tid = span.span_id, span.trace_id
        start, end = span.start_time_unix_nano, span.end_time_unix_nano
        if len(sid) != 8 or sid == _ZERO8:
            reason, detail = INVALID_SPAN_ID, f"span id {hex_id(sid)!r} is not 8 non-zero bytes"
        elif len(tid) != 16 or tid == _ZERO16:
            reason, detail = INVALID_TRACE_ID, f"trace id {hex_id(tid)!r} is not 16 non-zero bytes"
        elif not 0 < start <= end < _MAX_END_NS:
            reason = INVALID_SPAN_TIME
            detail = f"start {start} ns, end {end} ns: need 0 < start <= end < 2^33 s"
        elif limit_ns is not None and end > limit_ns:
            reason = SPAN_IN_FUTURE
            detail = (f"span ends {(end - limit_ns + self._ahead) / 1e9:.1f} s after it was received "
                      f"(more than {self._ahead / 1e9:.0f} s)")
        elif end // self._b <= st.sealed_upto:
            reason = LATE_SPAN
            detail = (f"span ends at {end / 1e9:.3f}, in a second already sealed (sealed up to "
                      f"{(st.sealed_upto + 1) * self._b / 1e9:.3f})")
        else:
            reason, detail = DUPLICATE_SPAN, f"span {hex_id(sid)} of trace {hex_id(tid)} was already received"
        self._die(reason, detail, source, pos, span)

    def _reject_agent(self, agent: str, source: str, pos: int, span) -> None:
        if agent:
            self._die(INVALID_AGENT, f"agent name of {len(agent)} characters exceeds {MAX_NAME}",
                      source, pos, span)
        else:
            self._die(MISSING_SERVICE_NAME, "span has no gen_ai.agent.name and its resource no service.name",
                      source, pos, span)

    def _link(self, st: _Tenant, parent: _Ref, child: _Ref) -> None:
        """Both ends of a parent/child pair are known (called once per pair)."""
        child.parent_agent = parent.agent
        if parent.agent == child.agent:
            return
        if parent.cls == CLIENT:
            if parent.callee is None:
                parent.callee = child.agent
            return
        if child.cls > CANDIDATE:  # not a request of its agent: no call
            return
        # a call parent.agent -> child.agent without a client span (in-process invoke_agent, or
        # context propagated by an uninstrumented client): at the child's second when it is
        # still open, else at the parent's (the later arrival, so never sealed)
        j = child.j if child.j > st.sealed_upto else parent.j
        if j <= st.sealed_upto:
            return
        accs = st.accs.get(j)
        if accs is None:
            accs = st.accs[j] = {}
        acc = accs.get(parent.agent)
        if acc is None:
            acc = accs[parent.agent] = _Acc()
        _add_call(acc.calls, child.agent, child.err, child.dur_ms)

    # ------------------------------------------------------------------------------ sealing
    def _watermark_ns(self, st: _Tenant) -> int:
        wm = st.max_end_ns - self._grace
        if self._max_received_ns:
            wm = max(wm, self._max_received_ns - self._idle)
        return wm

    def seal(self) -> SealResult:
        """Emit every second whose end is at or before its tenant's watermark (final), and the
        dead letters since the previous call."""
        records: list[dict] = []
        for name in sorted(self._tenants):
            st = self._tenants[name]
            upto = self._watermark_ns(st) // self._b - 1  # bucket j ends at (j + 1) * b
            if upto > st.sealed_upto:
                self._seal_tenant(name, st, upto, records)
        return self._result(records)

    def flush(self) -> SealResult:
        """Seal every second of every tenant (shutdown, idle): afterwards nothing is pending."""
        records: list[dict] = []
        for name in sorted(self._tenants):
            st = self._tenants[name]
            upto = st.max_end_ns // self._b  # no span (nor call) is in a later second
            if upto > st.sealed_upto:
                self._seal_tenant(name, st, upto, records)
        return self._result(records)

    def _result(self, records: list[dict]) -> SealResult:
        dead, self._dead = self._dead, []
        self._records += len(records)
        return SealResult(records, dead)

    def _seal_tenant(self, name: str, st: _Tenant, upto: int, out: list[dict]) -> None:
        js = sorted(j for j in st.accs if j <= upto)
        inflight = self._in_flight(st, js)
        for j in js:
            accs = st.accs.pop(j)
            ts = (j + 1) * self._b
            ts = ts // 1_000_000_000 if self._integral_ts else round(ts / 1e9, 6)
            counts = inflight.get(j, {})
            for agent in sorted(accs):
                acc = accs[agent]
                out.append(self._record(name, agent, ts, acc, counts.get(agent, 0)))
                self._in_records += acc.n
        st.sealed_upto = upto
        st.crossing = [c for c in st.crossing if c[1] > upto]
        st.src_max = {src: j for src, j in st.src_max.items() if j > upto}
        st.rotate(self._retain_buckets, self._wait_buckets)

    @staticmethod
    def _in_flight(st: _Tenant, js: list[int]) -> dict[int, Counter]:
        """Request spans known now that are open at the end of each bucket in ``js``."""
        out: dict[int, Counter] = {}
        if not js:
            return out
        for j0, j1, ref in st.crossing:
            lo, hi = bisect_left(js, j0), bisect_right(js, j1)
            if lo < hi and ref.is_request():
                for j in js[lo:hi]:
                    c = out.get(j)
                    if c is None:
                        c = out[j] = Counter()
                    c[ref.agent] += 1
        return out

    @staticmethod
    def _record(tenant: str, agent: str, ts: float, acc: _Acc, in_flight: int) -> dict:
        durs, errs = acc.durs, acc.errs
        for ref in acc.cands:
            if ref.is_request():
                durs.append(ref.dur_ms)
                errs += ref.err
        calls = acc.calls
        for ref in acc.clients:
            if ref.callee is None and ref.unread is not None:
                ref.peer = _read_attributes(ref.unread.attributes, True)[2]
            ref.unread = None
            dst = ref.callee or ref.peer
            if dst and dst != agent:
                _add_call(calls, dst, ref.err, ref.dur_ms)
        n = len(durs)
        if n:
            durs.sort()
            p50, p99 = round(_quantile(durs, 0.5), 3), round(_quantile(durs, 0.99), 3)
        else:
            p50 = p99 = 0.0
        return {"tenant": tenant, "agent_id": agent, "ts": ts,
                "latency_p50_ms": p50, "latency_p99_ms": p99,
                "error_rate": round(errs / n, 6) if n else 0.0, "request_count": n,
                "cpu": 0.0, "memory": 0.0, "queue_depth": 0, "in_flight": in_flight,
                "calls": [{"dst": dst, "count": c[0], "errors": c[1],
                           "latency_ms": min(round(c[2] / c[0], 3), MAX_LATENCY_MS)}
                          for dst, c in sorted(calls.items())]}


def _read_attributes(attributes, is_client: bool) -> tuple[str | None, str | None, str | None, bool]:
    """(gen_ai.agent.name, gen_ai.operation.name, callee named by a client span, error.type set)."""
    gen_agent = op = peer = peer_svc = addr = port = None
    has_error = False
    for kv in attributes:
        code = _ATTR_CODES.get(kv.key)
        if code is None:
            continue
        if code == 1:
            gen_agent = kv.value.string_value
        elif code == 2:
            op = kv.value.string_value
        elif code == 3:
            has_error = True
        elif not is_client:
            continue
        elif code == 4:
            peer = kv.value.string_value
        elif code == 5:
            peer_svc = kv.value.string_value
        elif code == 6:
            addr = kv.value.string_value
        else:
            v = kv.value
            port = v.int_value or v.string_value
    if is_client:
        peer = peer or peer_svc or ((f"{addr}:{port}" if port else addr) if addr else None)
        if peer and len(peer) > MAX_NAME:
            peer = None
    return gen_agent, op, peer, has_error


def _add_call(calls: dict[str, list], dst: str, err: bool, dur_ms: float) -> None:
    c = calls.get(dst)
    if c is None:
        calls[dst] = [1, 1 if err else 0, dur_ms]
    else:
        c[0] += 1
        c[1] += 1 if err else 0
        c[2] += dur_ms


def to_ndjson(records: list[dict]) -> bytes:
    """Records as NDJSON, the landing format the streaming job reads."""
    return b"".join(orjson.dumps(r) + b"\n" for r in records)
