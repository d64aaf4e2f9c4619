"""The graph sink: batched, idempotent writes over Bolt with change detection, retries
with backoff, and a local spill file for what could not be written.

One ``GraphSink`` per worker (the Beam DoFn opens it in ``setup``). Each window becomes a
``Batch`` of steps (statement name, parameter rows); a batch is delivered in managed
transactions (``execute_write``: the driver retries transient errors), at most
``batch_size`` rows per transaction. When delivery still fails after ``retries`` attempts
with exponential backoff (or the server rejects the write outright), the batch is appended
to the spill file (NDJSON) and counted; ``replay`` (``aura sink replay``, or the next run)
delivers it later. Replaying is harmless: every statement is idempotent.

Bounded in time: a server can accept TCP connections and never answer (a frozen or
overloaded process, a black-holed port), and the driver has no read timeout on an open
connection. So every attempt runs in a worker thread the caller waits for: an attempt
that commits no transaction for ``stall_timeout_s`` is abandoned (its driver with it), no
attempt starts after ``give_up_s``, and before its first transaction an attempt ends at
that deadline too. One delivery against a silent server thus returns (spilled, the
reason naming the timeout) within about ``give_up_s``.

Change detection: per tenant, the values last written for each agent and CALLS edge (in a
``SinkState`` shared by the sinks of one process). A row is written when it is new, when a
value moved by more than ``epsilon * max(1, |old|)``, when its window is earlier than any
seen (``first_window`` moves; the Cypher guards keep the newer values), or when its
staggered refresh is due (every ``refresh_windows`` windows per row, spread by
a hash of its key, so that ``last_window`` stays within that many windows of the truth).
A spilled batch forgets its tenant's state, so the next window writes in full.

Two paths build a snapshot's agent and CALLS steps. The column path (default,
``pipelines.graph.plan``): change detection in numpy (``delta.KeyTable``), one list per
property, MERGE for new rows, MATCH by key + SET for rows this process wrote, and a
refresh of unchanged rows rewrites ``last_window`` only. The per-row path of issue 5
(``row_path=True``: a dict per row, ``select_changed`` per row, MERGE for every row) is
kept as the benchmark's baseline; both leave the same graph. With ``parallel`` > 1 the
update and touch steps of a window run in that many concurrent transactions.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipelines.graph import plan as P
from pipelines.graph import rows as R
from pipelines.graph import statements as S
from pipelines.graph import steps as T
from pipelines.graph.delta import KeyTable, tenant_tables
from pipelines.topology.features import WindowFeatures
from pipelines.topology.filtrations import StressFiltration
from pipelines.windowing import WindowSnapshot

log = logging.getLogger(__name__)

STATEMENTS = {"agents": S.AGENTS, "calls": S.CALLS, "window_snapshot": S.WINDOW_SNAPSHOT,
              "window_topology": S.WINDOW_TOPOLOGY, "chain_prev": S.CHAIN_PREV,
              "chain_next": S.CHAIN_NEXT, "prediction": S.PREDICTION, "implicates": S.IMPLICATES}
STATEMENTS.update(incident=S.INCIDENT, incident_actions=S.INCIDENT_ACTIONS)  # the incident workflow's
STATEMENTS.update(agents_merge=S.AGENTS_MERGE, agents_update=S.AGENTS_UPDATE, agents_touch=S.AGENTS_TOUCH,
                  calls_merge=S.CALLS_MERGE, calls_update=S.CALLS_UPDATE, calls_touch=S.CALLS_TOUCH)
SPILL_NAME = "graph-spill.ndjson"


@dataclass(frozen=True)
class GraphSpec:
    """Everything a worker needs to open the sink (picklable, no connections)."""

    uri: str
    user: str = "neo4j"
    password: str = ""
    database: str = "neo4j"
    epsilon: float = 0.05  # relative change below which an agent/CALLS row is not rewritten (< 0: all)
    refresh_windows: int = 10  # every row is rewritten at least this often (staggered); 0: never
    batch_size: int = 5000  # rows per transaction
    parallel: int = 1  # concurrent transactions (sessions) for a step larger than batch_size
    row_path: bool = False  # the per-row path of issue 5 (dict rows, MERGE only): the bench's baseline
    top_k: int = 5  # implicated agents per window / prediction
    slide_ms: int | None = None  # window slide (NEXT links slots start -> start + slide)
    spill_path: str | None = None  # NDJSON of undelivered batches (None: nothing spilled, errors raise)
    retries: int = 3  # attempts after the first, backoff_s * 2**i apart
    backoff_s: float = 0.5
    retry_time_s: float = 3.0  # the driver's own retry budget inside execute_write
    connect_timeout_s: float = 3.0  # TCP connect; the Bolt handshake gets 2 s more
    stall_timeout_s: float = 15.0  # an attempt that commits no transaction this long is abandoned
    give_up_s: float = 20.0  # no attempt starts after this; a silent server costs at most this long
    cooldown_s: float = 5.0  # after a spill, batches go straight to the spill file this long
    latency_ref_ms: float = 50.0
    timeout_ms: float = 1000.0
    state_key: str = ""  # sinks with the same key share change-detection state (one run)

    def driver(self):
        from neo4j import GraphDatabase

        return GraphDatabase.driver(self.uri, auth=(self.user, self.password),
                                    max_transaction_retry_time=self.retry_time_s,
                                    connection_timeout=self.connect_timeout_s,
                                    connection_acquisition_timeout=self.connect_timeout_s + 2)

    def build(self) -> GraphSink:
        return GraphSink(self)


@dataclass
class Batch:
    """One window's (or prediction's) writes: ordered (statement name, rows) steps."""

    kind: str  # snapshot | topology | prediction
    tenant: str
    window: int  # window start, ms
    pane: int
    steps: list[tuple[str, list[dict]]]

    @property
    def n_rows(self) -> int:
        return sum(T.n_rows(r) for _, r in self.steps)

    def to_json(self) -> dict:
        """As spilled: MATCH-only steps become their MERGE twins, touches are dropped
        (``plan.SPILLED``)."""
        steps = [[P.SPILLED.get(n, n), r] for n, r in self.steps if P.SPILLED.get(n, n)]
        return {"kind": self.kind, "tenant": self.tenant, "window": self.window, "pane": self.pane,
                "steps": steps}

    @staticmethod
    def from_json(d: dict) -> Batch:
        return Batch(d["kind"], d["tenant"], d["window"], d["pane"], [(n, r) for n, r in d["steps"]])


@dataclass
class TenantState:
    """What the graph holds for a tenant's agents and edges (``select_changed``)."""

    agents: dict[str, tuple] = field(default_factory=dict)  # the per-row path (``row_path``)
    calls: dict[tuple[str, str], tuple] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    tables: tuple[KeyTable, KeyTable] = field(default_factory=lambda: tenant_tables(len(R.AGENT_PROPS)))


class SinkState:
    """Per-tenant change-detection state shared by the sinks of one run in a process."""

    _REGISTRY: dict[str, SinkState] = {}
    _LOCK = threading.Lock()

    def __init__(self):
        self.tenants: dict[str, TenantState] = {}
        self._lock = threading.Lock()

    def tenant(self, tenant: str) -> TenantState:
        with self._lock:
            return self.tenants.setdefault(tenant, TenantState())

    def forget(self, tenant: str) -> None:
        st = self.tenant(tenant)
        st.agents.clear()
        st.calls.clear()
        for table in st.tables:
            table.clear()

    @classmethod
    def shared(cls, key: str) -> SinkState:
        if not key:
            return cls()
        with cls._LOCK:
            return cls._REGISTRY.setdefault(key, cls())

    @classmethod
    def release(cls, key: str) -> None:
        with cls._LOCK:
            cls._REGISTRY.pop(key, None)


def changed(old: tuple, new: tuple, epsilon: float) -> bool:
    """True when any value moved by more than ``epsilon * max(1, |old|)`` (None = unknown)."""
    for o, n in zip(old, new, strict=True):
        if o is None or n is None:
            if o is not n:
                return True
        elif isinstance(o, str) or isinstance(n, str):
            if o != n:
                return True
        elif abs(n - o) > epsilon * max(1.0, abs(o)):
            return True
    return False


def refresh_due(key: str, window_ms: int, window_len_ms: int, every: int) -> bool:
    """Staggered refresh: each key comes due once every ``every`` window slots."""
    if every <= 0:
        return False
    slot = window_ms // max(window_len_ms, 1)
    return (zlib.crc32(key.encode()) + slot) % every == 0


def select_changed(rows: list[dict], cache: dict, key_of, values_of, epsilon: float,
                   window_len_ms: int, refresh: int) -> list[dict]:
    """The rows the graph needs, given what it holds. ``cache``: key -> (values written,
    window written, newest window seen, earliest window seen).

    New key: write. Earlier than any window seen: write (``first_window`` moves; the Cypher
    guard keeps the newer values). Older than the newest window seen: skip (the graph already
    holds newer or equal values). The newest window again (a later pane, a redelivery): write
    if changed. A newer window: write if changed or its staggered refresh is due.
    """
    out = []
    for row in rows:
        held = cache.get(key_of(row))
        w = row["window"]
        if held is None or w < held[3]:
            out.append(row)
            continue
        values, _, seen, _ = held
        if w < seen:
            continue
        if changed(values, values_of(row), epsilon) or (
                w > seen and refresh_due(str(key_of(row)), w, window_len_ms, refresh)):
            out.append(row)
    return out


def remember(rows: list[dict], written: list[dict], cache: dict, key_of, values_of) -> None:
    """After a successful write of ``written`` (a subset of ``rows``): what the graph holds
    now (written rows where they are the newest) and which windows were seen."""
    done = {key_of(r) for r in written}
    for row in rows:
        key, w = key_of(row), row["window"]
        held = cache.get(key)
        if held is None:
            if key in done:
                cache[key] = (values_of(row), w, w, w)
            continue
        values, at, seen, first = held
        if key in done and w >= at:
            values, at = values_of(row), w
        cache[key] = (values, at, max(seen, w), min(first, w))


def _agent_key(r: dict) -> str:
    return r["key"]


def _agent_values(r: dict) -> tuple:
    p = r["props"]
    return tuple(p.get(k) for k in R.AGENT_PROPS)


def _call_key(r: dict) -> tuple[str, str]:
    return r["src"], r["dst"]


def _call_values(r: dict) -> tuple:
    return r["weight"], r["errors"], r["latency_ms"]


class GraphUnavailable(RuntimeError):
    """The graph server could not take a batch (and no spill file is configured)."""


class GraphTimeout(TimeoutError):
    """The graph server did not answer in time (an attempt was abandoned)."""


def _timed_out(err: BaseException | None) -> bool:
    """True when an error (or one it was raised from) is a timeout."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, TimeoutError):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


class _Progress:
    """What a running attempt has done: committed transactions and when the last one was."""

    def __init__(self):
        self.at = time.monotonic()
        self.done = 0
        self._lock = threading.Lock()  # lanes tick from their own threads

    def tick(self) -> None:
        with self._lock:
            self.done += 1
            self.at = time.monotonic()


class GraphSink:
    """Batched idempotent writer (module doc). ``stats`` counts what it did."""

    def __init__(self, spec: GraphSpec, driver=None, state: SinkState | None = None):
        self.spec = spec
        self._driver = driver
        self._owns_driver = driver is None
        self.state = state or SinkState.shared(spec.state_key)
        self.stress = StressFiltration(spec.latency_ref_ms, spec.timeout_ms)
        self.stats: Counter = Counter()
        self.timing: Counter = Counter()  # seconds: build_s (batch), statements_s, step.<name>
        self.errors: list[str] = []
        self._schema_applied = False
        self._down_until = 0.0
        self._last_failure = ""
        self._spill_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------
    @property
    def driver(self):
        if self._driver is None:
            self._driver = self.spec.driver()
        return self._driver

    def open(self) -> GraphSink:
        """Connect and apply the constraints; an unreachable server is not fatal here (and
        a silent one costs at most ``give_up_s``)."""
        try:
            self._bounded(lambda driver, progress: self.apply_schema(driver),
                          time.monotonic() + self.spec.give_up_s)
        except Exception as err:  # noqa: BLE001 - reported when a batch fails too
            self.errors.append(f"schema: {self._reason(err)}")
        return self

    def apply_schema(self, driver=None) -> None:
        """Constraints and indexes (``schemas/graph.v1.cypher``); idempotent."""
        with (driver or self.driver).session(database=self.spec.database) as session:
            for stmt in S.constraint_statements():
                session.run(stmt).consume()
        self._schema_applied = True

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
            self._driver = None

    def _abandon_driver(self, driver) -> None:
        """Drop a driver whose connection is stuck on a silent server: the next attempt
        connects afresh. Closed in the background (closing can block on that connection)."""
        if self._driver is driver:
            self._driver = None
            self._schema_applied = False
        if self._owns_driver:
            threading.Thread(target=driver.close, name="graph-sink-abandon", daemon=True).start()

    def _bounded(self, work, deadline: float) -> None:
        """Run ``work(driver, progress)`` in a worker thread and wait for it: abandoned (its
        driver with it: ``GraphTimeout``) after ``stall_timeout_s`` without a committed
        transaction, or at ``deadline`` while none is committed yet."""
        driver, progress = self.driver, _Progress()
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                work(driver, progress)
                outcome.append(None)
            except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
                outcome.append(err)

        def limit() -> float:
            stall = progress.at + self.spec.stall_timeout_s
            return stall if progress.done else min(stall, deadline)

        worker = threading.Thread(target=run, name="graph-sink-write", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(max(0.0, limit() - time.monotonic()))
            if worker.is_alive() and time.monotonic() >= limit():
                self._abandon_driver(driver)
                if time.monotonic() - progress.at >= self.spec.stall_timeout_s:
                    waited = f"for {self.spec.stall_timeout_s:g} s (stall_timeout_s)"
                else:
                    waited = f"before the delivery deadline (give_up_s = {self.spec.give_up_s:g} s)"
                raise GraphTimeout(f"timeout: {self.spec.uri} did not answer {waited}; "
                                   f"{progress.done} transaction(s) of the attempt committed; "
                                   "the server is frozen, overloaded or not speaking Bolt")
        err = outcome[0] if outcome else RuntimeError("graph write thread ended without a result")
        if err is not None:
            raise err

    def _reason(self, err: BaseException) -> str:
        """One line on why a write failed; a timeout says so first."""
        text = f"{type(err).__name__}: {err}".replace("\n", " ")
        if _timed_out(err) and not isinstance(err, GraphTimeout):
            text = (f"timeout: {self.spec.uri} did not answer within the connection deadline "
                    f"({self.spec.connect_timeout_s + 2:g} s: connect_timeout_s + 2); {text}")
        return text

    def __enter__(self) -> GraphSink:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- building batches ---------------------------------------------------------------
    def snapshot_batch(self, snap: WindowSnapshot) -> tuple[Batch, Callable[[], None]]:
        """The batch of a snapshot pane (changed agents and edges only), and what to call
        once it is written (the tenant's change-detection state learns what the graph holds)."""
        score = R.involvement(snap, self.stress)
        hot = R.implicated(snap, self.stress, self.spec.top_k, score) if self.spec.top_k else []
        st = self.state.tenant(snap.tenant)
        eps, every = self.spec.epsilon, self.spec.refresh_windows
        if self.spec.row_path:
            rows, done = self._row_steps(snap, score, st)
        else:
            plan = P.plan_snapshot(snap, score, *st.tables, eps, every)
            rows = plan.steps
            written = {k: plan.count(k, "written") for k in ("agents", "calls")}
            touched = {k: plan.count(k, "touch") for k in ("agents", "calls")}
            self.stats["agent_rows_skipped"] += len(snap.agents) - written["agents"]
            self.stats["call_rows_skipped"] += len(snap.edge_src) - written["calls"]

            def done() -> None:
                plan.remember(*st.tables)
                self.stats["agent_rows"] += written["agents"]
                self.stats["call_rows"] += written["calls"]
                self.stats["agent_rows_touched"] += touched["agents"]
                self.stats["call_rows_touched"] += touched["calls"]
        win = R.window_row(snap, hot, self.spec.slide_ms)
        steps = [*rows, ("window_snapshot", [win]), ("chain_prev", [win]), ("chain_next", [win]),
                 ("implicates", [{"key": win["key"]}])]
        return Batch("snapshot", snap.tenant, win["start"], win["pane"], steps), done

    def _row_steps(self, snap: WindowSnapshot, score: np.ndarray, st: TenantState) -> tuple[list, Callable]:
        """The per-row path of issue 5: a dict per row, ``select_changed`` per row, MERGE."""
        agents, calls = R.agent_rows(snap, score), R.call_rows(snap)
        length = R.ms(snap.window_end) - R.ms(snap.window_start)
        eps, every = self.spec.epsilon, self.spec.refresh_windows
        agents_w = select_changed(agents, st.agents, _agent_key, _agent_values, eps, length, every)
        calls_w = select_changed(calls, st.calls, _call_key, _call_values, eps, length, every)
        self.stats["agent_rows_skipped"] += len(agents) - len(agents_w)
        self.stats["call_rows_skipped"] += len(calls) - len(calls_w)

        def done() -> None:
            remember(agents, agents_w, st.agents, _agent_key, _agent_values)
            remember(calls, calls_w, st.calls, _call_key, _call_values)
            self.stats["agent_rows"] += len(agents_w)
            self.stats["call_rows"] += len(calls_w)
        return [("agents", agents_w), ("calls", calls_w)], done

    # -- writing ------------------------------------------------------------------------
    def write_snapshot(self, snap: WindowSnapshot) -> bool:
        """Agents, CALLS edges and the Window node of one snapshot pane. True if written
        now, False if spilled."""
        st = self.state.tenant(snap.tenant)
        with st.lock:  # one tenant's windows are written one at a time
            t0 = time.perf_counter()
            batch, done = self.snapshot_batch(snap)
            self.timing["build_s"] += time.perf_counter() - t0
            ok = self.deliver(batch)
            if ok:
                done()
            else:
                self.state.forget(snap.tenant)
            return ok

    def write_topology(self, wf: WindowFeatures, vec: np.ndarray) -> bool:
        """The topology part of a Window node (feature vector, Betti numbers, ...)."""
        row = R.topology_row(wf, vec)
        with self.state.tenant(wf.tenant).lock:
            return self.deliver(Batch("topology", wf.tenant, row["start"], row["pane"],
                                      [("window_topology", [row])]))

    def write_prediction(self, pred: dict) -> bool:
        """A Prediction node, linked to its window and the window's implicated agents."""
        row = R.prediction_row(pred)
        with self.state.tenant(row["tenant"]).lock:
            return self.deliver(Batch("prediction", row["tenant"], row["start"], row["pane"],
                                      [("prediction", [row]), ("implicates", [{"key": row["window_key"]}])]))

    def deliver(self, batch: Batch, spill: bool = True) -> bool:
        """Write a batch, retrying with backoff; spill it when that fails (module doc).
        Returns within about ``give_up_s`` when the server does not answer."""
        from neo4j.exceptions import ClientError

        if time.monotonic() < self._down_until and spill and self.spec.spill_path:
            self._spill(batch, f"graph server down (cooling off after an earlier failure: "
                               f"{self._last_failure})")
            return False
        start = time.monotonic()
        deadline = start + self.spec.give_up_s
        last: Exception | None = None
        attempts = 0
        for attempt in range(self.spec.retries + 1):
            if attempt:
                pause = self.spec.backoff_s * 2 ** (attempt - 1)
                if time.monotonic() + pause >= deadline:
                    break
                self.stats["retries"] += 1
                time.sleep(pause)
            attempts += 1
            try:
                self._bounded(lambda driver, progress: self._write(batch, driver, progress), deadline)
                self.stats["batches"] += 1
                self.stats[f"batches.{batch.kind}"] += 1
                return True
            except ClientError as err:  # rejected (syntax, constraint, auth): retrying cannot help
                last = err
                break
            except Exception as err:  # noqa: BLE001 - unreachable, transient, timeouts: retry
                last = err
                if isinstance(err, GraphTimeout):
                    self.stats["timeouts"] += 1
        msg = (f"{self._reason(last)} (gave up after {attempts} attempt(s) in "
               f"{time.monotonic() - start:.1f} s)")
        if not spill or not self.spec.spill_path:
            raise GraphUnavailable(f"graph write of {batch.kind} {batch.tenant}/{batch.window} failed: {msg}")
        self._down_until = time.monotonic() + self.spec.cooldown_s
        self._last_failure = msg
        self._spill(batch, msg)
        return False

    def _write(self, batch: Batch, driver, progress: _Progress) -> None:
        if not self._schema_applied:
            self.apply_schema(driver)
            progress.tick()
        t0 = time.perf_counter()
        try:
            for lanes in T.stages(batch.steps, self.spec.batch_size, self.spec.parallel, P.splittable):
                if len(lanes) == 1:
                    self._lane(driver, lanes[0], progress)
                    continue
                self._lanes(driver, lanes, progress)
        finally:
            self.timing["statements_s"] += time.perf_counter() - t0

    def _lanes(self, driver, lanes: list[list[T.Transaction]], progress: _Progress) -> None:
        """Run lanes concurrently, each in a daemon thread (a lane stuck on a frozen server
        must not keep the process alive: ``_bounded`` abandons the attempt); the first
        error is raised once every lane has ended."""
        errors: list[BaseException] = []

        def run(lane: list[T.Transaction]) -> None:
            try:
                self._lane(driver, lane, progress)
            except BaseException as err:  # noqa: BLE001 - raised by the caller
                errors.append(err)

        threads = [threading.Thread(target=run, args=(lane,), name="graph-sink-lane", daemon=True)
                   for lane in lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _lane(self, driver, lane: list[T.Transaction], progress: _Progress) -> None:
        _LANE.timing = self.timing
        with driver.session(database=self.spec.database) as session:
            for group in lane:
                session.execute_write(_run_steps, group)
                progress.tick()

    def _spill(self, batch: Batch, reason: str) -> None:
        path = self.spec.spill_path
        self._append(path, batch, reason)
        self.stats["spilled"] += 1
        self.stats[f"spilled.{batch.kind}"] += 1
        if len(self.errors) < 20:
            self.errors.append(reason)
        log.warning("graph sink: spilled %s %s/%s to %s (%s)", batch.kind, batch.tenant, batch.window,
                    path, reason)

    # -- replay -------------------------------------------------------------------------
    def replay(self, path: str | None = None) -> ReplayReport:
        """Deliver the batches of a spill file (and of an interrupted earlier replay);
        what fails again goes back to the spill file."""
        path = path or self.spec.spill_path
        pending = sorted(glob.glob(f"{glob.escape(path)}.replaying-*"))
        if os.path.exists(path):
            taken = f"{path}.replaying-{os.getpid()}-{time.time_ns()}"
            os.replace(path, taken)
            pending.append(taken)
        report = ReplayReport(path)
        for name in pending:
            with open(name) as fh:
                batches = [Batch.from_json(json.loads(x)) for x in fh if x.strip()]
            for b in batches:
                if not report.failed:  # after a failure the rest goes back untried
                    try:
                        self.deliver(b, spill=False)
                        report.delivered += 1
                        report.windows.add((b.kind, b.tenant, b.window, b.pane))
                        continue
                    except GraphUnavailable as err:
                        report.error = str(err)
                report.failed += 1
                self._append(path, b, report.error)
            os.remove(name)
        return report

    def _append(self, path: str, batch: Batch, reason: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        line = json.dumps({**batch.to_json(), "error": reason[:500]}, separators=(",", ":"))
        with self._spill_lock, open(path, "a") as fh:
            fh.write(line + "\n")

    def report(self) -> str:
        """One line on what the sink did, and where undelivered batches are."""
        s = self.stats
        text = (f"{s['batches']} batch(es) written ({s['agent_rows']} agent rows, {s['call_rows']} "
                f"CALLS rows; {s['agent_rows_skipped'] + s['call_rows_skipped']} unchanged skipped)")
        if s["spilled"]:
            text += (f"; {s['spilled']} batch(es) NOT written, spilled to {self.spec.spill_path} "
                     f"({self.errors[-1] if self.errors else 'unknown error'}); deliver them with "
                     "`aura sink replay`")
        return text


@dataclass
class ReplayReport:
    path: str
    delivered: int = 0
    failed: int = 0
    error: str = ""
    windows: set = field(default_factory=set)

    def render(self) -> str:
        text = f"replayed {self.delivered} batch(es) from {self.path}"
        if self.failed:
            text += f"; {self.failed} still undelivered (kept in {self.path}): {self.error}"
        return text


def pending_batches(path: str) -> int:
    """Batches waiting in a spill file (and interrupted replays)."""
    n = 0
    for name in [path, *glob.glob(f"{glob.escape(path)}.replaying-*")]:
        if os.path.exists(name):
            with open(name) as fh:
                n += sum(1 for x in fh if x.strip())
    return n


_LANE = threading.local()  # the running lane's sink timing (``_run_steps`` keeps its signature)


def _run_steps(tx, group: T.Transaction) -> None:
    timing = getattr(_LANE, "timing", None)
    for name, payload in group:
        t0 = time.perf_counter()
        tx.run(STATEMENTS[name], T.params(payload)).consume()
        if timing is not None:
            timing[f"step.{name}"] += time.perf_counter() - t0
