"""A recorded corpus of testbed runs: real-process fleets' traces as native telemetry, with
the testbed's own onsets as labels, split into calibration and evaluation runs.

Each run (``pipelines.testbed.family``) starts its fleet with an in-process OTLP/HTTP
receiver as the export endpoint; the spans go through the service's own mapping
(``pipelines.service.span_mapping``) into telemetry records, so the corpus holds exactly
what ``aura api`` would land. Layout under ``out``::

    <split>/<run>.ndjson            the run's telemetry (schemas/telemetry.v1.json)
    <split>/labels.json             the split's labels (schemas/labels.v1.json), ``split`` set
    <split>/runs/<run>/             fleet.json, summary.json, client.ndjson, spans.json
    labels.json                     every run's labels (``aura backtest --input`` scores the split)
    manifest.json                   the plan: seeds, kinds, configuration keys, per split

Calibration and evaluation runs never share a seed or a fleet configuration (the plan
checks). Recording is resumable: a run whose telemetry exists is not run again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from pipelines.service.otlp import OtlpDecodeError, decode_traces
from pipelines.service.span_mapping import SpanAggregator, to_ndjson
from pipelines.testbed.family import KINDS, RunPlan, draw_run

SPLITS = ("calibration", "evaluation")
SEED_BASE = {"calibration": 10_000, "evaluation": 20_000}  # disjoint seed ranges
# per split: kinds in turn (triggered runs carry a 90-150 s quiet lead; quiet runs 720 s)
DEFAULT_RUNS = {"calibration": 12, "evaluation": 16}
RUN_FILES = ("fleet.json", "summary.json", "spans.json", "labels.json", "client.ndjson", "wiring.json")
KIND_CYCLE = ("slow", "fail", "surge", "kill", "quiet", "slow", "fail", "kill", "surge", "quiet")


@dataclass(frozen=True)
class CorpusPlan:
    runs: tuple[RunPlan, ...]

    def split(self, name: str) -> list[RunPlan]:
        return [r for r in self.runs if r.split == name]


def plan_corpus(runs: dict[str, int] | None = None) -> CorpusPlan:
    """The corpus's runs: per split, seeds from its own range, kinds in ``KIND_CYCLE``
    order; a run whose fleet configuration already appears in the other split is redrawn
    with the next seed."""
    runs = runs or DEFAULT_RUNS
    out: list[RunPlan] = []
    keys: dict[str, set[str]] = {s: set() for s in SPLITS}
    for split in SPLITS:
        seed = SEED_BASE[split]
        for i in range(runs.get(split, 0)):
            kind = KIND_CYCLE[i % len(KIND_CYCLE)]
            while True:
                plan = draw_run(seed, split, kind)
                seed += 1
                if all(plan.config_key() not in keys[o] for o in SPLITS if o != split):
                    break
            keys[split].add(plan.config_key())
            out.append(plan)
    return CorpusPlan(tuple(out))


class TraceReceiver:
    """OTLP/HTTP ``POST /v1/traces`` on 127.0.0.1 (a free port) feeding a ``SpanAggregator``:
    sealed records accumulate in ``records``, dead letters are counted by reason."""

    def __init__(self, grace_s: float = 2.0):
        self.agg = SpanAggregator(default_tenant="testbed", grace_s=grace_s)
        self.records: list[dict] = []
        self.dead: dict[str, int] = {}
        self.rejected = 0
        self._lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    req = decode_traces(body, self.headers.get("Content-Type"),
                                        self.headers.get("Content-Encoding"))
                except OtlpDecodeError as err:
                    with rx._lock:
                        rx.rejected += 1
                    self._answer(400, err.reason.encode())
                    return
                with rx._lock:
                    rx.agg.add(req, f"request-{rx.agg.counts['requests']}", received_s=time.time())
                    rx._take(rx.agg.seal())
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _take(self, res) -> None:
        self.records.extend(res.records)
        for d in res.dead:
            self.dead[d.reason] = self.dead.get(d.reason, 0) + 1

    def __enter__(self) -> TraceReceiver:
        self._thread.start()
        return self

    def close(self) -> dict:
        """Stop serving, seal everything; the span counters (they reconcile)."""
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            self._take(self.agg.flush())
            return self.agg.counts

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.close()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def record_run(plan: RunPlan, out: str, log=print) -> dict:
    """Run one planned fleet, map its traces, write its telemetry and labels; its labels
    document (with ``split`` and ``config_key``)."""
    from pipelines.testbed.fleet import Fleet

    split_dir = Path(out) / plan.split
    run_dir = split_dir / "runs" / plan.name
    with TraceReceiver() as rx:
        plan.spec.otlp_endpoint = rx.endpoint
        fleet = Fleet(plan.spec, workdir=str(run_dir / "processes"))
        try:
            fleet.start()
            summary = fleet.run(plan.duration_s, plan.triggers, str(run_dir))
        finally:
            fleet.stop()
            fleet.close()
        time.sleep(1.0)  # the last export requests are answered
        counts = rx.close()
    records = sorted(rx.records, key=lambda r: (r["ts"], r["agent_id"]))
    _write(split_dir / f"{plan.name}.ndjson", to_ndjson(records))
    spans = {**counts, "dead_by_reason": rx.dead, "requests_rejected": rx.rejected,
             "exported_by_agents": sum(t.get("spans_exported", 0)
                                       for t in fleet.agent_totals(fleet.final_stats).values())}
    _write(run_dir / "spans.json", json.dumps(spans, indent=2).encode())
    doc = {**summary["labels"], "split": plan.split, "config_key": plan.config_key(), "kind": plan.kind}
    labels = {"schema": "aura.labels/v1", "scenarios": [doc]}
    _write(run_dir / "labels.json", json.dumps(labels, indent=2).encode())
    c = summary["cascades"]
    onset = f"onset {c[0]['onset'] - c[0]['trigger_time']:.0f} s after the trigger" if c else "no onset"
    log(f"{plan.name}: {len(records)} records, {counts['spans_received']} spans "
        f"({counts['spans_dead_total']} dead); {onset}; entry failures {summary['entry_fail_frac']:.1%}",
        flush=True)
    return doc


def _labels_of(out: str, plans: list[RunPlan]) -> list[dict]:
    docs = []
    for p in plans:
        path = Path(out) / p.split / "runs" / p.name / "labels.json"
        if path.exists() and telemetry_path(out, p.split, p.name) is not None:
            docs.extend(json.loads(path.read_text())["scenarios"])
    return docs


def quiet_disturbance(out: str, plan: RunPlan) -> float | None:
    """Fraction of entry requests that failed in the run's quiet lead (before its trigger;
    the whole of a quiet run), from the load generator's own outcomes: a healthy fleet
    fails none, so more means the run was disturbed (e.g. the machine was overloaded)."""
    path = Path(out) / plan.split / "runs" / plan.name / "client.ndjson"
    if not path.exists():
        return None
    lead = min((t.at_s for t in plan.triggers), default=plan.duration_s)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    quiet = [r for r in rows if r["t"] < lead]
    done = sum(r["ok"] + r["failed"] + r["timed_out"] + r["shed"] for r in quiet)
    bad = sum(r["failed"] + r["timed_out"] + r["shed"] for r in quiet)
    return round(bad / done, 4) if done else None


def write_indexes(out: str, plan: CorpusPlan) -> dict:
    """The per-split and whole-corpus labels files and the manifest, from what is recorded."""
    everything = []
    for split in SPLITS:
        docs = _labels_of(out, plan.split(split))
        everything += docs
        if docs:
            _write(Path(out) / split / "labels.json",
                   json.dumps({"schema": "aura.labels/v1", "scenarios": docs}, indent=1).encode())
    _write(Path(out) / "labels.json", json.dumps({"schema": "aura.labels/v1", "scenarios": everything},
                                                 indent=1).encode())
    manifest = {"schema": "aura.testbed-corpus/v1", "kinds": list(KINDS),
                "runs": [{**r.to_dict(), "recorded": telemetry_path(out, r.split, r.name) is not None,
                          "quiet_entry_fail_frac": quiet_disturbance(out, r)} for r in plan.runs]}
    _write(Path(out) / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest


def record_corpus(out: str, plan: CorpusPlan, jobs: int = 1, splits: tuple[str, ...] = SPLITS,
                  log=print, redo_disturbed: float | None = None) -> dict:
    """Record every planned run of ``splits`` not yet recorded (``jobs`` fleets at once);
    with ``redo_disturbed``, also again every recorded run whose quiet lead failed more
    than that fraction of entry requests (``quiet_disturbance``)."""
    if redo_disturbed is not None:
        for r in plan.runs:
            d = quiet_disturbance(out, r) if r.split in splits else None
            tele = telemetry_path(out, r.split, r.name)
            if d is not None and d > redo_disturbed and tele is not None:
                log(f"{r.name}: {d:.1%} of entry requests failed in its quiet lead: recording it again",
                    flush=True)
                tele.unlink()
    todo = [r for r in plan.runs if r.split in splits and telemetry_path(out, r.split, r.name) is None]
    minutes = sum(r.duration_s for r in todo) / 60
    log(f"corpus {out}: {len(todo)} runs to record ({minutes:.0f} fleet-minutes, {jobs} at a time)",
        flush=True)
    failures = []

    def one(r: RunPlan) -> None:
        try:
            record_run(r, out, log)
        except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
            failures.append((r.name, repr(err)))
            log(f"{r.name}: failed: {err!r}", flush=True)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, todo))
    manifest = write_indexes(out, plan)
    manifest["failures"] = failures
    return manifest


def telemetry_path(out: str, split: str, name: str) -> Path | None:
    """A run's telemetry file (NDJSON as recorded, or Parquet as packed), None if absent."""
    for suffix in (".ndjson", ".parquet"):
        p = Path(out) / split / f"{name}{suffix}"
        if p.exists():
            return p
    return None


def pack_corpus(src: str, dst: str) -> dict:
    """A copy of a recorded corpus small enough to ship: telemetry as zstd Parquet (the
    contract's Arrow schema), labels, manifest and each run's fleet, summary, span counts
    and client outcomes; no process logs. Returns {files, bytes}."""
    import shutil

    import pyarrow as pa

    from pipelines.simulation.output import write_table
    from pipelines.telemetry import parse_file
    from schemas.arrow import TELEMETRY

    src_p, dst_p = Path(src), Path(dst)
    files = 0
    for split in SPLITS:
        for tele in sorted((src_p / split).glob("*.ndjson")):
            parsed = parse_file(str(tele))
            if parsed.dead:
                raise ValueError(f"{tele}: {len(parsed.dead)} records break the contract; not packing")
            rows = [{k: r[k] for k in TELEMETRY.names} for r in parsed.records]
            for r in rows:
                r["ts"] = int(round(float(r["ts"]) * 1000))
            table = pa.Table.from_pylist(rows, schema=TELEMETRY.remove_metadata()).cast(TELEMETRY)
            (dst_p / split).mkdir(parents=True, exist_ok=True)
            write_table(table, str(dst_p / split / f"{tele.stem}.parquet"))
            run = src_p / split / "runs" / tele.stem
            for name in RUN_FILES:
                if (run / name).exists():
                    (dst_p / split / "runs" / tele.stem).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(run / name, dst_p / split / "runs" / tele.stem / name)
            files += 1
        if (src_p / split / "labels.json").exists():
            shutil.copyfile(src_p / split / "labels.json", dst_p / split / "labels.json")
    for name in ("labels.json", "manifest.json"):
        if (src_p / name).exists():
            shutil.copyfile(src_p / name, dst_p / name)
    size = sum(p.stat().st_size for p in dst_p.rglob("*") if p.is_file())
    return {"files": files, "bytes": size}
