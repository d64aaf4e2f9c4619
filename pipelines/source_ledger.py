"""The streaming source's durable ledger: what was read, where it went, what is final.

One SQLite file per output directory (``<out>/_ledger.sqlite``) outlives any process that
writes there. Per landed file (keyed by name and content hash, so a file read twice counts
once): records read, handed to windows and dead-lettered by reason, every tenant's watermark
before and after it (JSON objects; event time is per tenant, ``pipelines.tenant_time``), and
how many of its records went to each (tenant, window). A window is *final* once its
tenant's watermark passed its end plus the allowed lateness (or the stream ended) and its
last pane on disk holds every record the source handed it (and its downstream outputs
exist); a file is *retired* (may leave the landing directory) once every window it feeds is
final. After a crash, the files not retired are read again, in their first order and with
their first tenants' watermarks, so the windows they feed are rebuilt whole with the same
lateness decisions.

A ledger written before per-tenant event time (one watermark for all tenants, in
``wm_before``/``wm_after``) is upgraded in place: its watermark counts for every tenant when
the source resumes; a file of it not yet retired cannot be read again with per-tenant
watermarks, which is a clear error.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

LEDGER_FILE = "_ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  key TEXT PRIMARY KEY, name TEXT NOT NULL, seq INTEGER NOT NULL, bytes INTEGER NOT NULL,
  read INTEGER NOT NULL, emitted INTEGER NOT NULL, dead TEXT NOT NULL,
  wm_before REAL, wm_after REAL, max_seen REAL, retired INTEGER NOT NULL DEFAULT 0,
  reads INTEGER NOT NULL DEFAULT 1, run INTEGER NOT NULL, tenant_wm_before TEXT, tenant_wm_after TEXT);
CREATE TABLE IF NOT EXISTS file_windows (
  key TEXT NOT NULL, tenant TEXT NOT NULL, window_ms INTEGER NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (key, tenant, window_ms));
CREATE TABLE IF NOT EXISTS final_windows (
  tenant TEXT NOT NULL, window_ms INTEGER NOT NULL, pane INTEGER NOT NULL, n INTEGER NOT NULL,
  short INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, window_ms));
CREATE TABLE IF NOT EXISTS runs (
  run INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL, started REAL NOT NULL,
  ended REAL, how TEXT);
"""


def file_key(path: str) -> str:
    """``name:sha256`` of a landed file: the same bytes under the same name are one file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{os.path.basename(path)}:{h.hexdigest()[:32]}"


@dataclass
class FileRead:
    """One read of one landed file, as the ledger keeps it."""

    key: str
    name: str
    bytes: int
    read: int
    emitted: int
    dead: Counter
    wm_before: dict[str, float]  # tenant -> watermark before the file was read
    wm_after: dict[str, float]  # ... and after
    max_seen: dict[str, float]  # tenant -> largest event time seen so far
    windows: Counter = field(default_factory=Counter)  # (tenant, window ms) -> records


def _top(values: dict[str, float]) -> float | None:
    """The largest of a tenant -> time map (kept in the plain columns, for people)."""
    finite = [v for v in values.values() if math.isfinite(v)]
    return max(finite) if finite else None


GRAPH_MARK = "graph_written"  # an empty file per pane whose prediction is in the graph (or spilled)


def pane_path(out_dir: str, kind: str, tenant: str, window_ms: int, pane: int) -> str:
    ext = ".done" if kind == GRAPH_MARK else ".parquet"
    return os.path.join(out_dir, kind, f"tenant={tenant}", f"window={window_ms}-pane={pane}{ext}")


def mark_pane(out_dir: str, kind: str, tenant: str, window_ms: int, pane: int) -> None:
    """An empty marker file: this pane's output of ``kind`` is durable."""
    path = pane_path(out_dir, kind, tenant, window_ms, pane)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb"):
        pass


def window_dead_path(out_dir: str, tenant: str, window_ms: int, reason: str) -> str:
    """Where a window-level dead letter (features failed, verdict disputed) is kept, keyed."""
    return os.path.join(out_dir, "deadletter", "windows", f"tenant={tenant}",
                        f"window={window_ms}-{reason}.ndjson")


def last_pane(out_dir: str, tenant: str, window_ms: int) -> tuple[int, int] | None:
    """(pane index, records) of the window's last snapshot pane on disk, or None."""
    d = os.path.dirname(pane_path(out_dir, "snapshots", tenant, window_ms, 0))
    panes = [(int(p.rsplit("-pane=", 1)[1].removesuffix(".parquet")), p)
             for p in glob.glob(os.path.join(d, f"window={window_ms}-pane=*.parquet"))]
    if not panes:
        return None
    pane, path = max(panes)
    return pane, int(pq.read_table(path, columns=["n_records"]).column(0)[0].as_py())


def downstream_done(out_dir: str, tenant: str, window_ms: int, pane: int, kinds: tuple[str, ...]) -> bool:
    """Every later output of a pane exists, or the window was dead-lettered on the way."""
    if all(os.path.exists(pane_path(out_dir, k, tenant, window_ms, pane)) for k in kinds):
        return True
    return bool(glob.glob(window_dead_path(out_dir, tenant, window_ms, "*")))


class SourceLedger:
    """``<out>/_ledger.sqlite``; every change is one transaction, synced before it returns."""

    def __init__(self, out_dir: str, size_ms: int, lateness_ms: int):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.size_ms, self.lateness_ms = out_dir, size_ms, lateness_ms
        self.db = sqlite3.connect(os.path.join(out_dir, LEDGER_FILE), isolation_level=None,
                                  check_same_thread=False)  # the source runs in the engine's thread
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(files)")}
        for col in ("tenant_wm_before", "tenant_wm_after"):  # a ledger from before per-tenant time
            if col not in columns:
                self.db.execute(f"ALTER TABLE files ADD COLUMN {col} TEXT")
        self.run = self.db.execute("INSERT INTO runs (pid, started) VALUES (?, ?)",
                                   (os.getpid(), time.time())).lastrowid

    def close(self, how: str = "ended") -> None:
        self.db.execute("UPDATE runs SET ended = ?, how = ? WHERE run = ?", (time.time(), how, self.run))
        self.db.close()

    # -- files ---------------------------------------------------------------------------
    def prior(self, key: str) -> dict | None:
        """What an earlier read of this file recorded (None: never read): ``seq``, ``retired``
        and the tenants' watermarks ``wm_before`` and ``wm_after``."""
        row = self.db.execute("SELECT seq, retired, tenant_wm_before, tenant_wm_after FROM files "
                              "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[2] is None and not row[1]:
            raise RuntimeError(
                f"{key.split(':')[0]!r} was read by an AURA version with one watermark for all tenants "
                f"and is not yet safe; finish that output ({self.out_dir!r}) with that version, or "
                f"start a new output directory")
        return {"seq": row[0], "retired": row[1], "wm_before": json.loads(row[2] or "{}"),
                "wm_after": json.loads(row[3] or "{}")}

    def unretired(self) -> list[str]:
        """Names of files read but not retired, in their first reading order."""
        return [r[0] for r in self.db.execute("SELECT name FROM files WHERE retired = 0 ORDER BY seq")]

    def record(self, f: FileRead) -> None:
        """A file was read (again): its entry replaces any earlier one, so it counts once."""
        old = self.prior(f.key)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            seq = old["seq"] if old else (self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM files")
                                          .fetchone()[0])
            self.db.execute(
                "INSERT INTO files (key, name, seq, bytes, read, emitted, dead, wm_before, wm_after, "
                "max_seen, retired, reads, run, tenant_wm_before, tenant_wm_after) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET read = excluded.read, emitted = excluded.emitted, "
                "dead = excluded.dead, wm_after = excluded.wm_after, max_seen = excluded.max_seen, "
                "tenant_wm_after = excluded.tenant_wm_after, reads = files.reads + 1, run = excluded.run",
                (f.key, f.name, seq, f.bytes, f.read, f.emitted, json.dumps(dict(f.dead), sort_keys=True),
                 _top(f.wm_before), _top(f.wm_after), _top(f.max_seen), self.run,
                 json.dumps(f.wm_before, sort_keys=True), json.dumps(f.wm_after, sort_keys=True)))
            self.db.execute("DELETE FROM file_windows WHERE key = ?", (f.key,))
            self.db.executemany("INSERT INTO file_windows VALUES (?, ?, ?, ?)",
                                [(f.key, t, w, n) for (t, w), n in f.windows.items()])

    def resume(self) -> tuple[float | None, dict[str, float]]:
        """(watermark of every tenant, from a ledger of before per-tenant time, or None;
        tenant -> watermark) the source had reached over every run."""
        floor = self.db.execute("SELECT MAX(wm_after) FROM files WHERE tenant_wm_after IS NULL").fetchone()[0]
        wms: dict[str, float] = {}
        for (after,) in self.db.execute("SELECT tenant_wm_after FROM files "
                                        "WHERE tenant_wm_after IS NOT NULL"):
            for tenant, t in json.loads(after).items():
                wms[tenant] = max(t, wms.get(tenant, t))
        return floor, wms

    # -- windows -------------------------------------------------------------------------
    def final_windows(self) -> set[tuple[str, int]]:
        return {(t, w) for t, w in self.db.execute("SELECT tenant, window_ms FROM final_windows")}

    def settle(self, watermark: float | dict[str, float] | None, kinds: tuple[str, ...]) -> list[str]:
        """Mark final every open window whose time is up (its tenant's watermark past its end
        plus the allowed lateness: ``watermark`` maps tenant -> watermark, a number is every
        tenant's; ``None``: the stream ended, every window fired) and whose last pane on disk
        holds all its records; retire the files all of whose windows are final. Returns the
        names of the files retired now."""
        open_windows = self.db.execute(
            "SELECT fw.tenant, fw.window_ms, SUM(fw.n) FROM file_windows fw "
            "LEFT JOIN final_windows f ON f.tenant = fw.tenant AND f.window_ms = fw.window_ms "
            "WHERE f.tenant IS NULL GROUP BY fw.tenant, fw.window_ms").fetchall()
        done = []
        for tenant, w, expected in open_windows:
            if watermark is not None:
                wm = watermark.get(tenant) if isinstance(watermark, dict) else watermark
                if wm is None or w >= wm * 1000 - self.size_ms - self.lateness_ms:
                    continue
            last = last_pane(self.out_dir, tenant, w)
            if last is None or last[1] != expected:
                if watermark is None and last is not None and last[1] < expected:
                    done.append((tenant, w, last[0], last[1], 1))  # the stream ended short: say so
                continue
            if downstream_done(self.out_dir, tenant, w, last[0], kinds):
                done.append((tenant, w, last[0], last[1], 0))
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO final_windows VALUES (?, ?, ?, ?, ?)", done)
            ready = [r[0] for r in self.db.execute(
                "SELECT name FROM files WHERE retired = 0 AND NOT EXISTS ("
                " SELECT 1 FROM file_windows fw LEFT JOIN final_windows f"
                " ON f.tenant = fw.tenant AND f.window_ms = fw.window_ms"
                " WHERE fw.key = files.key AND f.tenant IS NULL)")]
            self.db.executemany("UPDATE files SET retired = 1 WHERE retired = 0 AND name = ?",
                                [(n,) for n in ready])
        return ready

    # -- reconciliation ------------------------------------------------------------------
    def totals(self) -> dict:
        """The whole history of this output: records in = windowed + dead-lettered."""
        read = emitted = reads = 0
        dead: Counter = Counter()
        files = retired = 0
        for r, e, d, n, ret in self.db.execute("SELECT read, emitted, dead, reads, retired FROM files"):
            read, emitted, reads, files, retired = read + r, emitted + e, reads + n, files + 1, retired + ret
            dead.update(json.loads(d))
        final, short = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(short), 0) FROM final_windows").fetchone()
        opened = self.db.execute("SELECT COUNT(*) FROM (SELECT DISTINCT tenant, window_ms FROM file_windows)"
                                 ).fetchone()[0]
        runs = self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        return {"runs": runs, "files": files, "file_reads": reads, "files_retired": retired,
                "read": read, "windowed": emitted, "dead_lettered": sum(dead.values()),
                "dead_by_reason": dict(sorted(dead.items())), "windows": opened,
                "windows_final": final - short, "windows_short": short,
                "reconciles": read == emitted + sum(dead.values()) and short == 0}
