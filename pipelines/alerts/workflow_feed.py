"""The incident workflow inside the alert service: committed verdicts -> interventions.

Each poll of the alert service hands the verdicts it read to ``WorkflowFeed.feed``, which
feeds them per tenant, in window order, to one ``IncidentWorkflow`` (checkpoints in
``<out>/incidents.sqlite``, so ``aura incident --db <out>/incidents.sqlite`` reads them).

Panes: a window is fed once, with the latest of its panes read by the first poll that reads
any (the on-time pane, as a rule); later panes of a fed window, and windows older than one
already fed (out of order on disk), are skipped and counted. The workflow cannot take back
what it did, so it acts on the verdict as first committed; the alerts follow later panes.

Restarts: the last window fed per tenant is kept in the table ``aura_feed`` of the same DB
(written after the windows of a poll were fed), so a restarted service replaying the
prediction files feeds nothing twice; a crash in between re-feeds only windows the
workflow's own incidents already saw (it skips those) or that opened nothing. The feed, an
``aura incident approve`` and a replay each hold ``store.writer_lock`` while they write.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
from collections.abc import Iterable

from pipelines.alerts.outputs import PaneFile, read_snapshot
from pipelines.alerts.policy import HEALTHY, AlertPolicy, Verdict
from pipelines.incidents.actuator import Actuator, Delivery, build_actuator
from pipelines.incidents.interventions import Intervention
from pipelines.incidents.playbook import Playbook
from pipelines.incidents.store import writer_lock
from pipelines.incidents.workflow import IncidentWorkflow, WindowObservation

log = logging.getLogger("aura.alerts")

INCIDENTS_DB = "incidents.sqlite"
INTERVENTIONS_LOG = "interventions.ndjson"
DEAD_LETTERS = "interventions.deadletter.ndjson"
OFF = "off"
FEED_COUNTERS = ("workflow_windows", "workflow_skipped", "workflow_errors")


def default_actuator(out_dir: str) -> str:
    """The service's default: log interventions to ``<out>/interventions.ndjson``."""
    return f"dry-run:{os.path.join(out_dir, INTERVENTIONS_LOG)}"


def make_actuator(spec: str, out_dir: str) -> tuple[Actuator, str]:
    """The actuator of ``spec`` (a webhook's dead letters go to ``<out>/``) and the spec with
    an absolute dry-run path (what an approval from another directory must use too)."""
    kind, _, arg = spec.partition(":")
    if kind == "dry-run" and arg:
        spec = f"dry-run:{os.path.abspath(arg)}"
    if kind != "webhook":
        return build_actuator(spec), spec
    return build_actuator(spec, dead_letter_path=os.path.join(os.path.abspath(out_dir), DEAD_LETTERS)), spec


def playbook_for(model_dir: str | None, policy: AlertPolicy) -> tuple[Playbook, str]:
    """The playbook frozen beside the model (``playbook.json``: the closed loop's cuts and
    variant), else the service's risk bands (lowest cut elevated, top cut high) with the
    playbook's defaults; and where it came from."""
    from pipelines.incidents.story import PLAYBOOK_FILE, frozen_playbook  # the backtest's imports: lazily
    from pipelines.inference import DEFAULT_MODEL_DIR

    model_dir = model_dir or DEFAULT_MODEL_DIR
    if os.path.exists(os.path.join(model_dir, PLAYBOOK_FILE)):
        params, source = frozen_playbook(model_dir)
        return Playbook(**params), source
    cuts = policy.bands.cuts
    return Playbook(cuts[0], cuts[-1]), f"the risk bands {','.join(f'{c:g}' for c in cuts)}"


class CountingActuator(Actuator):
    """Delegates to ``inner`` and counts deliveries by (kind, status)."""

    def __init__(self, inner: Actuator) -> None:
        self.inner, self.name = inner, inner.name
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.by_tenant: collections.Counter[tuple[str, str]] = collections.Counter()  # (tenant, kind)

    def act(self, iv: Intervention, now_s: float) -> Delivery:
        d = self.inner.act(iv, now_s)
        self.counts[(iv.kind, d.status)] += 1
        self.by_tenant[(iv.tenant, iv.kind)] += 1
        return d

    def close(self) -> None:
        self.inner.close()


class FeedMarks:
    """The last window fed per tenant, and the feed's settings, in tables of the DB."""

    def __init__(self, db: str) -> None:
        self.conn = sqlite3.connect(db, check_same_thread=False, timeout=30.0)
        with self.conn:
            self.conn.execute("CREATE TABLE IF NOT EXISTS aura_feed (tenant TEXT PRIMARY KEY, "
                              "window_start INTEGER NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS aura_feed_settings (key TEXT PRIMARY KEY, "
                              "value TEXT)")

    def last(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT tenant, window_start FROM aura_feed").fetchall())

    def save(self, marks: dict[str, int]) -> None:
        with self.conn:
            self.conn.executemany("INSERT INTO aura_feed VALUES (?, ?) ON CONFLICT(tenant) DO UPDATE SET "
                                  "window_start = excluded.window_start", sorted(marks.items()))

    def setting(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM aura_feed_settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_setting(self, key: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO aura_feed_settings VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.conn.close()


def stored_actuator(db: str) -> str | None:
    """The actuator spec the service recorded in ``db`` (None: no service wrote it)."""
    if not os.path.exists(db):
        return None
    marks = FeedMarks(db)
    try:
        return marks.setting("actuator")
    finally:
        marks.close()


def _certificate(cert: str | None) -> dict | str | None:
    try:
        return json.loads(cert) if cert else None
    except ValueError:
        return cert


class WorkflowFeed:
    """Feeds the alert service's verdicts to the workflow, each window once (module doc)."""

    def __init__(self, out_dir: str, workflow: IncidentWorkflow, db: str, actuator_spec: str) -> None:
        self.out_dir, self.wf, self.db = out_dir, workflow, db
        self.marks = FeedMarks(db)
        self.marks.set_setting("actuator", actuator_spec)
        self.last = self.marks.last()
        self.pending: dict[tuple[str, int], tuple[PaneFile, Verdict]] = {}
        self.counts = collections.Counter(dict.fromkeys(FEED_COUNTERS, 0))

    def feed(self, read: Iterable[tuple[PaneFile, Verdict]]) -> int:
        """Feeds the windows of ``read`` not fed before, in window order; how many."""
        for pf, v in read:
            key, queued = (v.tenant, v.window_start), self.pending.get((v.tenant, v.window_start))
            if v.window_start <= self.last.get(v.tenant, -1):
                self.counts["workflow_skipped"] += 1
            elif queued is None or queued[1].pane_index < v.pane_index:
                self.pending[key] = (pf, v)
        if not self.pending:
            return 0
        fed: dict[str, int] = {}
        n = 0
        with writer_lock(self.db):
            for key in sorted(self.pending):
                pf, v = self.pending.pop(key)
                if v.window_start <= self.last.get(v.tenant, -1):
                    self.counts["workflow_skipped"] += 1
                    continue
                try:
                    self.wf.observe(self._observation(pf, v))
                except Exception:  # noqa: BLE001 - one bad window must not stop the others; counted
                    self.counts["workflow_errors"] += 1
                    log.exception("incident workflow failed on %s", pf.path)
                self.last[v.tenant] = fed[v.tenant] = v.window_start
                n += 1
            self.marks.save(fed)
        self.counts["workflow_windows"] += n
        return n

    def _observation(self, pf: PaneFile, v: Verdict) -> WindowObservation:
        """The window as the workflow takes it; the snapshot (~20 ms to read) only where localise
        may use it: a window that may open or escalate an incident (elevated risk or a fleet not
        healthy)."""
        wanted = v.committed and not v.held_back and (
            v.probability >= self.wf.book.elevated or self.wf.policy.health(v.features) != HEALTHY)
        snap = read_snapshot(self.out_dir, v.tenant, v.window_start, v.pane_index) if wanted else None
        cert = _certificate(v.certificate)
        return WindowObservation(v.tenant, v.window_start, v.window_end, v.probability, cert, v.status,
                                 dict(v.features or {}), snap, pf.mtime)

    def counters(self) -> dict[str, int]:
        return {k: int(n) for k, n in dict(self.counts).items()}

    def interventions(self) -> dict[tuple[str, str], int]:
        """Deliveries made by this process, by (kind, status)."""
        return dict(getattr(self.wf.actuator, "counts", {}))

    def interventions_by_tenant(self) -> dict[tuple[str, str], int]:
        """Interventions issued by this process, by (tenant, kind)."""
        return dict(getattr(self.wf.actuator, "by_tenant", {}))

    def close(self) -> None:
        self.wf.actuator.close()
        self.marks.close()


def build_feed(out_dir: str, actuator: str, approve_above: float = 0.2, policy: AlertPolicy | None = None,
               model_dir: str | None = None) -> WorkflowFeed | None:
    """The feed for ``aura api`` (``actuator`` ``off``: None)."""
    if actuator == OFF:
        return None
    policy = policy or AlertPolicy()
    book, source = playbook_for(model_dir, policy)
    act, spec = make_actuator(actuator, out_dir)
    db = os.path.join(out_dir, INCIDENTS_DB)
    wf = IncidentWorkflow(db, CountingActuator(act), book, approve_above, policy=policy)
    log.info("incident workflow: %s, approval above %g, cuts %g/%g from %s", spec, approve_above,
             book.elevated, book.high, source)
    return WorkflowFeed(out_dir, wf, db, spec)
