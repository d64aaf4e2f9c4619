"""The AURA job on Apache Flink (PyFlink 2.3, local MiniCluster or a cluster).

The landing directory (or one file) is read by a FileSource (``LandingLines``; continuously
with ``monitor_interval_s``) as raw line bytes with their file's path, never decoded. Files
are handed to the reader in landing order, (modification time, path), as Beam's landing
source reads them (``OrderedSplitAssigner``): files that wait together - landed while the
job was down, or faster than it reads - are read oldest first, in one monitoring round,
across rounds and after a restore; processed files are remembered in the checkpointed source
state. Each line is parsed and validated once on the JVM (``ParseLines``, ``TelemetryParser``
in ``pipelines/flink/java``, built by ``pipelines.flink.udf`` and added with
``pipeline.jars``) against the telemetry contract (``schemas/telemetry.v1.json``): one
Jackson pass gives ``ok``, the tenant, the event time in ms and the record packed as bytes.
The parser is stricter than the contract only for rare valid forms (integers beyond 64
bits, integral floats for integer fields, RFC 3339 forms other than
``YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)``, duplicate keys, ``schema_version`` other than
the integer 1): the contract's validator (``pipelines.telemetry.parse_line``) then names
them ``unsupported_by_flink_sql`` dead letters, never silently dropped. Still on the JVM,
``ParsedRows`` sends the rows the parser refused to the dead letters, ``TenantKey`` keys the
others by tenant and ``TenantWindower`` (keyed state, checkpointed) assigns them to
event-time windows on the tenant's own watermark (its largest event time less the
out-of-orderness): a tenant ahead in event time makes no other tenant's records late. A
record whose earliest window has closed for its tenant is a ``late`` dead letter (no allowed
lateness). A tenant without records for ``tenant_idle_timeout_s`` (continuous mode) closes
its open windows; at the end of a bounded input, or on a drain, every open window closes. A
closed window leaves the JVM as columns in two byte arrays, keyed by tenant (``WindowRows``:
the records' numbers, agent and callee indices, the window's names once), so it crosses into
Python once, as one element: ``TenantWindows`` processes it on arrival
(no buffering, no timers; the tenant's sequence state is Flink keyed state, checkpointed),
decodes it with numpy and does snapshot, features, prediction, consensus and the graph
sink. Dead letters are named in Python and written through an exactly-once FileSink.
A local run's Python operators run in the driver's process (PyFlink loopback), so the
driver imports the stage's libraries before the job starts (``window_stage.preload``).

Parallelism: the Python stage (the heavy part) runs at ``parallelism``, keyed by tenant.
A landing directory is read at parallelism 1: several readers would read files side by side,
so a tenant's older file could be read after its newer one and be late. (A Kafka source
keeps order per partition and can read in parallel; ``infra/flink/kafka-source.sql``.) The
parse and the windower then run in the reader's chain (at parallelism 1 the windower holds
every key group, so the stream is keyed as it is, ``reinterpretAsKeyedStream``): only closed
windows are shuffled, not every record. A bounded input is one event-time batch, read in
parallel and keyed by tenant to the windower at ``parallelism``: its windows close at its
end (the tenants' watermarks trail by 99 days).

Outputs match the Beam job's layout (``snapshots/``, ``features/``, ``predictions/``,
``deadletter/``) plus a ledger per window (``windows/``) from which ``summarize`` rebuilds
the run's counts; all are keyed by (tenant, window), so recovery overwrites, never doubles.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass

from pipelines.flink import udf
from pipelines.flink.window_stage import LEDGER, StageSpec, preload
from pipelines.inputs import INPUT_SUFFIXES
from pipelines.run_summary import RunSummary

DEAD_DIR = "deadletter"
STOP_FILE = "_STOP"
BOUNDED_LAG_S = 99 * 86400.0


@dataclass(frozen=True)
class FlinkSpec:
    """How to run: source, windows, parallelism, checkpoints (times in seconds)."""

    source: str  # a directory (or one file) of NDJSON telemetry
    stage: StageSpec
    size_s: float = 10.0
    slide_s: float | None = None
    out_of_orderness_s: float = 5.0
    continuous: bool = False  # watch the directory for new files (else read what is there and end)
    monitor_interval_s: float = 1.0
    parallelism: int = 1
    max_parallelism: int = 128  # key groups: fixed for the life of the state
    checkpoint_dir: str | None = None  # file:// (or a path); None: checkpoints kept in memory
    checkpoint_interval_s: float = 10.0
    state_backend: str = "hashmap"  # hashmap | rocksdb
    restore_from: str | None = None  # a chk-* (or savepoint) directory
    max_runtime_s: float | None = None  # continuous: cancel after this long
    idle_timeout_s: float | None = None  # continuous: cancel after this long without a new window
    tenant_idle_timeout_s: float | None = 30.0  # continuous: a tenant's windows close after this long
    # idle (None: only at the end)

    def windower(self):
        """The JVM's ``TenantWindower`` of these windows. Bounded input: the tenants'
        watermarks trail by 99 days (the files are read in no particular order, so the input
        is one event-time batch) and windows close at its end; no idleness."""
        from pyflink.java_gateway import get_gateway

        lag_s = self.out_of_orderness_s if self.continuous else BOUNDED_LAG_S
        idle_s = (self.tenant_idle_timeout_s or 0.0) if self.continuous else 0.0
        return get_gateway().jvm.aura.flink.TenantWindower(_ms(self.size_s), _ms(self.slide_s or self.size_s),
                                                           _ms(lag_s), _ms(idle_s))


def _ms(s: float) -> int:
    return int(round(s * 1000))


def _uri(path: str) -> str:
    return path if "://" in path else "file://" + os.path.abspath(path)


def environment(spec: FlinkSpec):
    """A StreamExecutionEnvironment configured for the run."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    conf = Configuration()
    settings = {
        "python.executable": sys.executable,  # else workers lack pyflink (DESIGN.md)
        "python.client.executable": sys.executable,
        "parallelism.default": str(spec.parallelism),
        "pipeline.max-parallelism": str(spec.max_parallelism),
        "execution.checkpointing.interval": f"{int(spec.checkpoint_interval_s * 1000)} ms",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        "state.backend.type": spec.state_backend,
        "restart-strategy.type": "none",
        "python.fn-execution.bundle.time": "200",
        "pipeline.object-reuse": "true",  # no record copies between chained JVM operators
    }
    if spec.checkpoint_dir:
        settings["execution.checkpointing.dir"] = _uri(spec.checkpoint_dir)
    if spec.restore_from:
        settings["execution.savepoint.path"] = _uri(spec.restore_from)
    for k, v in settings.items():
        conf.set_string(k, v)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_python_executable(sys.executable)
    env.add_jars("file://" + udf.jar_path())
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return env


def build(spec: FlinkSpec):
    """Wire the job; returns the environment to execute."""
    from pyflink.common import Encoder, Types
    from pyflink.datastream.connectors.file_system import (
        BucketAssigner,
        FileSink,
        OutputFileConfig,
        RollingPolicy,
    )

    from pipelines.flink.functions import TenantWindows, dead_letter_json

    env = environment(spec)
    windows, dead_rows = _tenant_windows(_parsed_lines(env, spec), spec)
    done = windows.process(TenantWindows(spec.stage), Types.STRING())
    # explicitly: after the JVM part at parallelism 1, Python operators would inherit it
    _discard(done.name("TenantWindows").set_parallelism(spec.parallelism))  # outputs are files
    # the few dead letters at the reader's parallelism (forward from it, as the SQL source had
    # them): at parallelism 2 they would be a second Python operator and a shuffle
    dead = dead_rows.map(dead_letter_json, Types.STRING()).set_parallelism(_reader_parallelism(spec))
    dead_dir = os.path.join(spec.stage.out_dir, DEAD_DIR)
    sink = (FileSink.for_row_format(dead_dir, Encoder.simple_string_encoder())
            .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
            .with_output_file_config(OutputFileConfig.builder().with_part_prefix("part")
                                     .with_part_suffix(".ndjson").build())
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy()).build())
    dead.sink_to(sink).name("DeadLetters").set_parallelism(_reader_parallelism(spec))
    return env


def _reader_parallelism(spec: FlinkSpec) -> int:
    """One reader of a landing directory (landing order); a bounded input is read in parallel."""
    return 1 if spec.continuous else spec.parallelism


def _parsed_lines(env, spec: FlinkSpec):
    """The source's lines, parsed once on the JVM (module doc): a Java DataStream of rows
    (line, path, ok, tenant, et_ms, rec). One reader of a landing directory, in landing order."""
    from pyflink.common import WatermarkStrategy
    from pyflink.java_gateway import get_gateway

    flink = get_gateway().jvm.aura.flink
    parallelism = _reader_parallelism(spec)
    monitor_ms = _ms(spec.monitor_interval_s) if spec.continuous else 0  # 0: bounded
    source = flink.LandingLines.source(os.path.abspath(spec.source), monitor_ms)
    lines = (env._j_stream_execution_environment
             .fromSource(source, WatermarkStrategy.no_watermarks()._j_watermark_strategy, "Landing")
             .setParallelism(parallelism))
    return lines.flatMap(flink.ParseLines()).name("ParseLines").setParallelism(parallelism)


def _tenant_windows(j_parsed, spec: FlinkSpec):
    """The parsed rows (a Java DataStream) -> (closed windows keyed by tenant, dead-letter rows (line, path,
    late)), all on the JVM: ``ParsedRows`` splits off the rows the parser refused,
    ``TenantWindower`` (keyed by ``TenantKey``) emits each closed window as ``WindowRows``
    joins it and its late records as dead-letter rows; PyFlink's own key extractor
    (``KeyByKeySelector``) keys the windows, so they cross into Python once, at
    ``TenantWindows`` (``key_by`` would add a Python operator)."""
    from pyflink.common import Types
    from pyflink.datastream import DataStream, KeyedStream
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    flink = jvm.aura.flink
    j_ok = (j_parsed.process(flink.ParsedRows(), j_parsed.getType()).name("ParsedRows")
            .setParallelism(_reader_parallelism(spec)))  # chained to the parse
    value = Types.ROW([Types.LONG(), Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE()),
                       Types.PRIMITIVE_ARRAY(Types.BYTE())])  # start ms, end ms, heads, meta
    if spec.continuous:  # in the one reader's chain: the records are not shuffled (module doc)
        j_keyed = jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils.reinterpretAsKeyedStream(
            j_ok, flink.TenantKey())
    else:
        j_keyed = j_ok.keyBy(flink.TenantKey())
    j_windows = (j_keyed.process(spec.windower(), Types.ROW([Types.STRING(), value]).get_java_type_info())
                 .name("TenantWindower").setParallelism(_reader_parallelism(spec)))
    dead = DataStream(j_ok.getSideOutput(flink.ParsedRows.dead())).union(
        DataStream(j_windows.getSideOutput(flink.ParsedRows.dead())))
    key = Types.ROW([Types.STRING()]).get_java_type_info()
    return KeyedStream(j_windows.keyBy(jvm.KeyByKeySelector(), key), value, DataStream(j_windows)), dead


def _discard(stream) -> None:
    """A JVM sink that drops everything (no Python operator just to end the graph)."""
    from pyflink.java_gateway import get_gateway

    j_sink = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
    j_stream = stream._j_data_stream
    j_stream.sinkTo(j_sink).name("Discard").setParallelism(j_stream.getParallelism())  # chained


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest completed ``chk-N`` directory (with ``_metadata``) under a checkpoint dir."""
    found = []
    for meta in glob.glob(os.path.join(checkpoint_dir.removeprefix("file://"), "*", "chk-*", "_metadata")):
        d = os.path.dirname(meta)
        found.append((os.path.getmtime(meta), int(d.rsplit("-", 1)[1]), d))
    return max(found)[2] if found else None


def input_files(source: str) -> list[str]:
    """The telemetry files the job reads (hidden and ``_`` files are skipped, as Flink does)."""
    if os.path.isfile(source):
        return [source]
    return sorted(p for p in glob.glob(os.path.join(source, "*"))
                  if os.path.isfile(p) and not os.path.basename(p).startswith((".", "_")))


def _ledgers(out_dir: str) -> list[dict]:
    out = []
    for p in glob.glob(os.path.join(out_dir, LEDGER, "*", "*.json")):
        with open(p, "rb") as fh:
            out.append(json.loads(fh.read()))
    return out


def summarize(out_dir: str, files: list[str], elapsed_s: float = 0.0) -> RunSummary:
    """The run's counts from its outputs: read (non-blank input lines), windowed (each
    record once, in its earliest window), dead letters by reason, windows, predictions and
    the written verdicts by status."""
    read = 0
    for p in files:
        with open(p, "rb") as fh:
            read += sum(1 for x in fh if x.strip())
    dead: Counter = Counter()
    for p in glob.glob(os.path.join(out_dir, DEAD_DIR, "*.ndjson")):
        with open(p, "rb") as fh:
            dead.update(json.loads(x)["reason"] for x in fh if x.strip())
    led = _ledgers(out_dir)
    s = RunSummary("flink", out_dir, read=read, files=len(files), dead=dead, elapsed_s=elapsed_s)
    s.windowed = sum(x["n_fresh"] for x in led)
    s.windows = s.panes = len(led)
    s.feature_rows = sum(x["feature_row"] for x in led)
    s.predictions = sum(x["prediction"] for x in led)
    s.window_dead = Counter(x["window_dead"] for x in led if x["window_dead"])
    s.verdicts = Counter(x["status"] for x in led if x.get("status"))
    if any(x["committed"] or x["disputed"] for x in led):
        s.consensus = Counter(committed=sum(x["committed"] for x in led),
                              disputed=sum(x["disputed"] for x in led))
    for x in led:
        for kind, ok in x["graph"].items():
            s.graph[f"{'written' if ok else 'spilled'}.{kind}"] += 1
    return s


def run(spec: FlinkSpec, log=print) -> RunSummary:
    """Run the job to its end (bounded input) or until max runtime / idle timeout (continuous)."""
    t0 = time.perf_counter()
    os.makedirs(spec.stage.out_dir, exist_ok=True)
    preload(spec.stage)
    env = build(spec)
    if not spec.continuous:
        env.execute("aura-flink")
    else:
        client = env.execute_async("aura-flink")
        from pipelines.cli import mark_running

        mark_running(spec.stage.out_dir)  # the job reads its landing directory (the service's readiness)
        _wait(client, spec, log)
    files = [p for p in input_files(spec.source) if p.endswith(INPUT_SUFFIXES)]
    summary = summarize(spec.stage.out_dir, files, time.perf_counter() - t0)
    with open(os.path.join(spec.stage.out_dir, "summary.json"), "w") as fh:
        json.dump({**summary.to_dict(), "engine": "flink"}, fh, indent=2)
    return summary


def _wait(client, spec: FlinkSpec, log) -> None:
    """Continuous mode: once ``_STOP`` appears in the landing directory, no window closed for
    the idle timeout, or the max runtime passed, stop with a draining savepoint (the watermark
    goes to the end of time, so every open window fires, as when Beam's source ends)."""
    start = last = time.monotonic()
    seen = 0
    while True:
        time.sleep(0.5)
        status = str(client.get_job_status().result())
        if status in ("FINISHED", "FAILED", "CANCELED"):
            if status == "FAILED":
                client.get_job_execution_result().result()  # raises the job's error
            return
        n = len(glob.glob(os.path.join(spec.stage.out_dir, LEDGER, "*", "*.json")))
        now = time.monotonic()
        if n != seen:
            seen, last = n, now
        if (os.path.exists(os.path.join(spec.source, STOP_FILE))
                or (spec.max_runtime_s is not None and now - start >= spec.max_runtime_s)
                or (spec.idle_timeout_s is not None and now - last >= spec.idle_timeout_s)):
            target = _uri(os.path.join(spec.checkpoint_dir or spec.stage.out_dir, "savepoints"))
            path = _drain(client, target)
            log(f"flink: drained and stopped after {now - start:.0f} s ({seen} windows); savepoint {path}")
            return


def _drain(client, target: str, timeout_s: float = 180.0) -> str:
    """Stop with a savepoint, advancing to the end of event time (PyFlink 2.3's wrapper
    still calls the 1.x signature, so the Java client is called directly). A job whose tasks
    are (re)starting - just restored, or recovering from a failed task - cannot take the
    savepoint yet: try again until they run, up to ``timeout_s``."""
    from py4j.protocol import Py4JJavaError
    from pyflink.java_gateway import get_gateway

    fmt = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return str(client._j_job_client.stopWithSavepoint(True, target, fmt).get())
        except Py4JJavaError as err:
            if "not being executed at the moment" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def run_config(cfg, extractor=None, predictor=None, graph=None, consensus=None, log=print) -> RunSummary:
    """``aura run --engine flink``: a RunConfig (and the stages the CLI built) -> run."""
    source = cfg.landing or cfg.input
    if not os.path.exists(source):
        raise FileNotFoundError(f"the flink engine reads a directory or one file; {source!r} does not exist")
    restore = cfg.restore_from
    if restore == "latest":
        restore = latest_checkpoint(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        log(f"flink: restoring from {restore}" if restore
            else "flink: no checkpoint to restore, starting fresh")
    slide = cfg.window_slide_s or cfg.window_size_s
    stage = StageSpec(cfg.out, int(round(cfg.window_size_s * 1000)), int(round(slide * 1000)), extractor,
                      predictor, consensus, graph, resume=restore is not None)
    spec = FlinkSpec(source, stage, cfg.window_size_s, cfg.window_slide_s, cfg.max_out_of_orderness_s,
                     continuous=cfg.landing is not None, monitor_interval_s=max(cfg.poll_interval_s, 0.1),
                     parallelism=cfg.parallelism, max_parallelism=cfg.max_parallelism,
                     checkpoint_dir=cfg.checkpoint_dir,
                     checkpoint_interval_s=cfg.checkpoint_interval_s, state_backend=cfg.state_backend,
                     restore_from=restore, max_runtime_s=cfg.max_runtime_s, idle_timeout_s=cfg.idle_timeout_s,
                     tenant_idle_timeout_s=cfg.tenant_idle_timeout_s)
    return run(spec, log)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.flink.job SPEC.pkl``: run a pickled FlinkSpec (tests, benches)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="a pickled FlinkSpec")
    p.add_argument("--restore", help="a chk-* directory to restore from")
    a = p.parse_args(argv)
    from pipelines import tracing

    tracing.configure("aura-job")  # when an OTLP endpoint is set in the environment
    with open(a.spec, "rb") as fh:
        spec: FlinkSpec = pickle.load(fh)
    if a.restore:
        from dataclasses import replace

        spec = replace(spec, restore_from=a.restore)
    s = run(spec)
    print(json.dumps(s.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
