"""The ``aura`` command line: simulate, run, demo, validate."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time

from pipelines.simulation.scenario import MECHANISMS, ScenarioConfig

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


# -- simulate ------------------------------------------------------------------------------
def add_simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="output/sim", help="directory for telemetry files")
    p.add_argument("--labels", default=None, help="labels file (default: <out>/../labels.json)")
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of event time")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between records of an agent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph", choices=("layered", "scale_free"), default="layered")
    p.add_argument("--mechanisms", type=_names, default=MECHANISMS,
                   help=f"comma-separated, from {','.join(MECHANISMS)}")
    p.add_argument("--severities", type=_floats, default=(),
                   help="per-episode trigger severities in [0,1] (default: drawn from the seed)")
    p.add_argument("--tenant", default="acme")
    p.add_argument("--tenants", type=int, default=1, help="independent fleets <tenant>-0.. when > 1")
    p.add_argument("--format", choices=("ndjson", "parquet"), default="ndjson")
    p.add_argument("--file-seconds", type=float, default=10.0, help="event time per output file")
    p.add_argument("--start", type=float, default=ScenarioConfig.start_epoch_s,
                   help="epoch seconds of the first tick")


def scenario_configs(a: argparse.Namespace) -> list[ScenarioConfig]:
    tenants = [a.tenant] if a.tenants == 1 else [f"{a.tenant}-{i}" for i in range(a.tenants)]
    return [ScenarioConfig(n_agents=a.agents, duration_s=a.duration, tick_s=a.tick, seed=a.seed + i,
                           graph=a.graph, tenant=t, start_epoch_s=a.start, mechanisms=a.mechanisms,
                           severities=a.severities)
            for i, t in enumerate(tenants)]


def simulate(a: argparse.Namespace, pace_s: float = 0.0, quiet: bool = False) -> dict:
    from pipelines.simulation.output import simulate_to_dir, write_labels
    from pipelines.simulation.scenario import Scenario

    t0 = time.perf_counter()
    rows = 0

    def count(_path: str, n: int) -> None:
        nonlocal rows
        rows += n

    docs = simulate_to_dir([Scenario(cfg) for cfg in scenario_configs(a)], a.out, a.format,
                           a.file_seconds, pace_s, count)
    labels = a.labels or os.path.join(os.path.dirname(os.path.abspath(a.out)), "labels.json")
    write_labels(docs, labels)
    elapsed = time.perf_counter() - t0
    if not quiet:
        n_c = sum(len(d["cascades"]) for d in docs)
        n_f = sum(len(d["fizzles"]) for d in docs)
        print(f"simulated {rows} records ({len(docs)} tenant(s)) in {elapsed:.1f} s: "
              f"{n_c} cascade(s), {n_f} fizzled trigger(s)\n  telemetry: {a.out}\n  labels:    {labels}")
    return {"labels": labels, "docs": docs, "rows": rows}


# -- run -----------------------------------------------------------------------------------
def add_otlp_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otlp-endpoint", dest="otlp_endpoint",
                   help="trace AURA itself (one span per window per stage) to this OTLP/HTTP URL (a base URL "
                   "gets /v1/traces); default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
                   "$OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing")


def job_observability(a: argparse.Namespace) -> None:
    """The streaming job's process: traces when an endpoint is configured; log records as
    ``$AURA_LOG_FORMAT`` says when it is set (``aura api`` sets it for its job)."""
    from pipelines import tracing
    from pipelines.logs import FORMAT_ENV, configure_logging

    tracing.configure("aura-job", getattr(a, "otlp_endpoint", None))
    if os.environ.get(FORMAT_ENV):
        configure_logging(level=logging.WARNING)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with a [run] table")
    p.add_argument("--input", help="a telemetry file, directory or glob, read once")
    p.add_argument("--landing", help="a directory watched for new telemetry files")
    p.add_argument("--out", help="output directory (default output/run)")
    p.add_argument("--mode", choices=("streaming", "batch"))
    p.add_argument("--window-size", dest="window_size_s", type=float)
    p.add_argument("--window-slide", dest="window_slide_s", type=float)
    p.add_argument("--allowed-lateness", dest="allowed_lateness_s", type=float)
    p.add_argument("--max-out-of-orderness", dest="max_out_of_orderness_s", type=float)
    p.add_argument("--tenant-idle-timeout", dest="tenant_idle_timeout_s", type=float,
                   help="landing: close a tenant's open windows after this many seconds without "
                        "its records (default 30)")
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=float,
                   help="landing: stop after this many seconds without new files")
    p.add_argument("--max-runtime", dest="max_runtime_s", type=float)
    add_otlp_arg(p)
    p.add_argument("--no-features", dest="features", action="store_false", default=None,
                   help="stop after windowing (no topology features)")
    p.add_argument("--ph-backend", choices=("ripser", "giotto"))
    p.add_argument("--comove-max-points", dest="comove_max_points", type=int)
    p.add_argument("--no-predict", dest="predict", action="store_false", default=None,
                   help="stop after the features (no cascade prediction)")
    p.add_argument("--model-dir", dest="model_dir", help="ONNX model + metadata (default: committed)")
    p.add_argument("--predictor", choices=("onnx", "triton"), help="default onnx (in-process)")
    p.add_argument("--triton-url", dest="triton_url", help="host:port of a Triton server")
    p.add_argument("--triton-protocol", dest="triton_protocol", choices=("grpc", "http"))
    p.add_argument("--no-progress", action="store_true")
    add_graph_args(p)
    add_consensus_args(p)
    add_engine_args(p)


def add_consensus_args(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("consensus (n = 3f+1 validators agree on every prediction)")
    c.add_argument("--no-consensus", dest="consensus", action="store_false", default=None,
                   help="predictions go on without validator agreement (no certificates)")
    c.add_argument("--validators", type=int, help="n = 3f+1 validators (default 4)")
    c.add_argument("--consensus-epsilon", dest="consensus_epsilon", type=float,
                   help="largest |p - p'| a validator accepts (default 1e-4); the risk band must match")
    c.add_argument("--risk-bands", dest="risk_bands", help="probability cut points (default 0.3,0.7)")
    c.add_argument("--max-block", dest="max_block", type=int, help="verdicts per block (default 256)")
    c.add_argument("--validator-backends", dest="validator_backends",
                   help="onnx|triton for all, or one per validator comma-separated (default onnx)")
    c.add_argument("--validator-keys", dest="validator_keys",
                   help="validator key directory from 'aura audit keygen' (default: fresh keys per run)")
    c.add_argument("--validators-at", dest="validators_at", metavar="CONFIG.json",
                   help="the validators run as processes (python -m pipelines.consensus.tcp CONFIG RID) "
                        "described by this file; default: in this process")
    c.add_argument("--validators-timeout", dest="validators_timeout_s", type=float, metavar="SECONDS",
                   help="with --validators-at: a verdict not committed in this time is disputed "
                        "no_quorum (default: the file's commit_timeout_s, 10)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("engine (beam: DirectRunner; flink: PyFlink job, pipelines/flink)")
    f.add_argument("--engine", choices=("beam", "flink"))
    f.add_argument("--parallelism", type=int, help="flink: job parallelism (default 1)")
    f.add_argument("--max-parallelism", dest="max_parallelism", type=int,
                   help="flink: key groups (default 128); keep it for the life of the state")
    f.add_argument("--checkpoint-dir", dest="checkpoint_dir", help="flink: checkpoint directory (file://)")
    f.add_argument("--checkpoint-interval", dest="checkpoint_interval_s", type=float,
                   help="flink: seconds between checkpoints (default 10)")
    f.add_argument("--state-backend", dest="state_backend", choices=("hashmap", "rocksdb"))
    f.add_argument("--restore-from", dest="restore_from",
                   help="flink: a chk-*/savepoint directory, or 'latest' (newest under --checkpoint-dir)")


_ENGINE_FLAGS = ("engine", "parallelism", "max_parallelism", "checkpoint_dir", "checkpoint_interval_s",
                 "state_backend", "restore_from")


def _consensus_overrides(a: argparse.Namespace) -> dict:
    names = ("consensus", "validators", "consensus_epsilon", "risk_bands", "max_block", "validator_backends",
             "validator_keys", "validators_at", "validators_timeout_s")
    return {k: getattr(a, k, None) for k in names}


def add_graph_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("graph sink (Neo4j over Bolt; default: an embedded ArcadeDB Bolt server)")
    g.add_argument("--no-graph", dest="graph", action="store_false", default=None,
                   help="do not write predictions and topology to the graph")
    g.add_argument("--graph-uri", dest="graph_uri",
                   help="bolt:// or neo4j:// URI of a Neo4j 5 server (default: $NEO4J_URI, else embedded)")
    g.add_argument("--graph-user", dest="graph_user", help="default: $NEO4J_USER, else neo4j")
    g.add_argument("--graph-password", dest="graph_password", help="default: $NEO4J_PASSWORD")
    g.add_argument("--graph-database", dest="graph_database", help="default: $NEO4J_DATABASE, else neo4j")
    g.add_argument("--graph-epsilon", dest="graph_epsilon", type=float,
                   help="agent/CALLS values that moved less than this (relative) are not rewritten")
    g.add_argument("--graph-refresh-windows", dest="graph_refresh_windows", type=int,
                   help="rewrite every agent/CALLS row at least this often (0: never)")
    g.add_argument("--graph-batch-size", dest="graph_batch_size", type=int, help="rows per transaction")
    g.add_argument("--graph-parallel", dest="graph_parallel", type=int,
                   help="concurrent transactions (sessions) for the agent/CALLS updates of a window")
    g.add_argument("--graph-top-k", dest="graph_top_k", type=int, help="implicated agents per prediction")


_GRAPH_FLAGS = ("graph", "graph_uri", "graph_user", "graph_password", "graph_database", "graph_epsilon",
                "graph_refresh_windows", "graph_batch_size", "graph_top_k", "graph_parallel")


def _graph_overrides(a: argparse.Namespace) -> dict:
    return {k: getattr(a, k, None) for k in _GRAPH_FLAGS}


@contextlib.contextmanager
def _graph_session(cfg):
    """The GraphSpec of a run (None without the graph sink); prints what the sink did."""
    from pipelines.graph.sink import pending_batches
    from pipelines.graph.target import open_graph, spill_path

    settings = cfg.graph_settings()
    if settings is None:
        yield None
        return
    with open_graph(settings, cfg.out, log=lambda m: print(m, file=sys.stderr)) as spec:
        yield spec
    waiting = pending_batches(spill_path(cfg.out))
    if waiting:
        print(f"graph: {waiting} batch(es) could not be written to {spec.uri} and wait in "
              f"{spill_path(cfg.out)} ({_last_spill_error(spill_path(cfg.out))}); deliver them with "
              f"`aura sink replay --out {cfg.out}` (or the next run does)", file=sys.stderr)


def _last_spill_error(path: str) -> str:
    last = ""
    with open(path) as fh:
        for line in fh:
            last = line or last
    return json.loads(last).get("error", "unknown error") if last.strip() else "unknown error"


def run_job(a: argparse.Namespace, progress_total: int | None = None):
    from pipelines.beam import job
    from pipelines.config import load_run_config
    from pipelines.inputs import expand_inputs
    from pipelines.stream_source import LandingDirectory

    cfg = load_run_config(a.config, input=a.input, landing=a.landing, out=a.out, mode=a.mode,
                          window_size_s=a.window_size_s, window_slide_s=a.window_slide_s,
                          allowed_lateness_s=a.allowed_lateness_s,
                          max_out_of_orderness_s=a.max_out_of_orderness_s,
                          tenant_idle_timeout_s=a.tenant_idle_timeout_s,
                          idle_timeout_s=a.idle_timeout_s, max_runtime_s=a.max_runtime_s,
                          features=a.features, ph_backend=a.ph_backend,
                          comove_max_points=a.comove_max_points, predict=a.predict, model_dir=a.model_dir,
                          predictor=a.predictor, triton_url=a.triton_url, triton_protocol=a.triton_protocol,
                          **_graph_overrides(a), **_consensus_overrides(a),
                          **{k: getattr(a, k, None) for k in _ENGINE_FLAGS})
    spec, extractor, predictor = cfg.window_spec(), cfg.extractor(), cfg.predictor_spec()
    consensus = cfg.consensus_spec()
    with _graph_session(cfg) as graph:  # the configured Neo4j, or the embedded server (stopped after)
        bar = None if a.no_progress else _progress(progress_total)
        if cfg.engine == "flink":
            from pipelines.flink.job import run_config

            summary = run_config(cfg, extractor, predictor, graph, consensus,
                                 log=lambda m: print(m, file=sys.stderr))
        elif cfg.landing:
            from pipelines.warmup import warm_up

            took = warm_up(extractor, predictor, graph)  # the first window is then as quick as the rest
            print(f"aura run: stages warmed up in {took:.1f} s", file=sys.stderr)
            on_file = (lambda _p, st: bar.update(st.read - bar.n)) if bar else None
            source = LandingDirectory(cfg.landing, spec, max_out_of_orderness_s=cfg.max_out_of_orderness_s,
                                      tenant_idle_timeout_s=cfg.tenant_idle_timeout_s,
                                      poll_interval_s=cfg.poll_interval_s, idle_timeout_s=cfg.idle_timeout_s,
                                      max_runtime_s=cfg.max_runtime_s, guard=cfg.guard(), on_file=on_file,
                                      on_start=lambda: mark_running(cfg.out), out_dir=cfg.out)
            summary = job.run_landing(source, cfg.out, extractor, predictor, graph, consensus=consensus)
        else:
            paths = expand_inputs(cfg.input)
            if bar is not None:
                bar.total = len(paths)
                bar.unit = "file"
            if cfg.mode == "batch":
                summary = job.run_batch(paths, spec, cfg.out, extractor, predictor, graph,
                                        consensus=consensus)
            else:
                summary = job.run_files_streaming(paths, spec, cfg.out, cfg.max_out_of_orderness_s,
                                                  cfg.guard(), extractor, predictor, graph,
                                                  consensus=consensus)
            if bar is not None:
                bar.update(len(paths))
    if bar is not None:
        bar.close()
    with open(os.path.join(cfg.out, "summary.json"), "w") as fh:
        json.dump(summary.to_dict(), fh, indent=2)
    return summary


RUNNING = "_RUNNING"


def mark_running(out_dir: str) -> None:
    """``<out>/_RUNNING`` (this process's pid): the streaming job reads its landing directory."""
    from pipelines.service.durable import write_durably

    os.makedirs(out_dir, exist_ok=True)
    write_durably(out_dir, RUNNING, str(os.getpid()).encode())


def _progress(total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, unit="rec", desc="aura run", dynamic_ncols=True, file=sys.stderr)


def render_summary(s, extra: dict[str, str] | None = None) -> str:
    """The short table a run ends with."""
    rows = [("mode", s.mode), ("files read", s.files), ("records in", s.read),
            ("records windowed", s.windowed), ("records dead-lettered", s.dead_total)]
    rows += [(f"  - {reason}", n) for reason, n in sorted(s.dead.items())]
    rows += [("windows emitted", s.windows), ("snapshot panes", s.panes),
             ("feature rows", s.feature_rows), ("predictions", s.predictions),
             ("windows dead-lettered (features)", sum(s.window_dead.values()))]
    rows += [(f"  - {reason}", n) for reason, n in sorted(s.window_dead.items())]
    if s.consensus:
        rows += [("  - committed by consensus", s.consensus["committed"]),
                 ("  - disputed (dead-lettered)", s.consensus["disputed"])]
    if s.verdicts:  # written verdicts by status (none in a summary from before statuses)
        from pipelines.calibration import STATUSES

        rows.append(("verdicts", ", ".join(f"{s.verdicts[k]} {k.replace('_', ' ')}" for k in STATUSES)))
    if s.ledger:  # a crash-safe landing run: the counts above are this output's whole history
        led = s.ledger
        rows += [("runs into this output", led["runs"]),
                 ("file reads (again after restarts)", f"{led['file_reads']} "
                                                       f"({led['file_reads'] - led['files']})"),
                 ("windows final / short of records", f"{led['windows_final']} / {led['windows_short']}")]
    rows += [
             ("reconciles (in = windowed + dead)", "yes" if s.reconciles else "NO"),
             ("elapsed", f"{s.elapsed_s:.1f} s"),
             ("throughput", f"{s.read / max(s.elapsed_s, 1e-9):,.0f} records/s"),
             ("snapshots", os.path.join(s.out_dir, "snapshots")),
             ("features", os.path.join(s.out_dir, "features")),
             ("predictions", os.path.join(s.out_dir, "predictions")),
             ("graph batches written", sum(v for k, v in s.graph.items() if k.startswith("written."))),
             ("graph batches spilled", sum(v for k, v in s.graph.items() if k.startswith("spilled."))),
             ("dead letters", os.path.join(s.out_dir, "deadletter"))]
    rows += list((extra or {}).items())
    width = max(len(str(k)) for k, _ in rows)
    line = "-" * (width + 40)
    return "\n".join([line] + [f"{k:<{width}}  {v}" for k, v in rows] + [line])


# -- demo ----------------------------------------------------------------------------------
def fault_lines() -> bytes:
    """Records the contract rejects, one of each kind, plus one far too late."""
    good = {"tenant": "acme", "agent_id": "a00000", "ts": "2026-01-01T00:09:59Z",
            "latency_p50_ms": 10.0, "latency_p99_ms": 20.0, "error_rate": 0.0, "request_count": 10,
            "cpu": 0.5, "memory": 0.5, "queue_depth": 0, "in_flight": 1, "calls": []}
    bad = [json.dumps(good)[:-7],  # truncated JSON
           json.dumps({**good, "error_rate": 1.7}),
           json.dumps({**good, "latency_p50_ms": -3.0}),
           json.dumps({k: v for k, v in good.items() if k != "cpu"}),
           json.dumps({**good, "request_count": "ten"}),
           json.dumps({**good, "ts": "2099-01-01T00:00:00Z"}),
           json.dumps({**good, "ts": "2026-01-01T00:00:01Z"})]  # windows long closed: late
    return ("\n".join(bad) + "\n").encode()


DEMO_SEVERITIES = (0.05, 0.95, 0.1)  # a fizzle, then a cascade (mechanisms cycle; 600 s hold two)


def demo(a: argparse.Namespace) -> int:
    """Start ``aura api`` (which runs the streaming job and the graph), simulate a 200-agent
    fleet and send its telemetry to the service as it is produced, then stop the service and
    show what the job did."""
    import shutil

    import httpx

    from pipelines.run_summary import RunSummary
    from pipelines.service import outputs
    from pipelines.service.launch import ApiProcess

    root = a.out
    shutil.rmtree(root, ignore_errors=True)
    outbox = os.path.join(root, "outbox")
    os.makedirs(outbox)
    t0 = time.monotonic()
    service = ApiProcess(root, ("--default-tenant", "acme")).start()
    base = service.url
    try:
        print(f"aura api (pid {service.proc.pid}) on {base} while the demo lasts: try "
              f"curl {base}/v1/tenants/acme/risk | {base}/docs | dashboard: {base}/dashboard?tenant=acme",
              file=sys.stderr)
        sim_args = argparse.Namespace(
            out=outbox, labels=os.path.join(root, "labels.json"), agents=a.agents, duration=a.duration,
            tick=1.0, seed=a.seed, graph="layered", mechanisms=MECHANISMS, severities=DEMO_SEVERITIES,
            tenant="acme", tenants=1, format="ndjson", file_seconds=10.0, start=ScenarioConfig.start_epoch_s)
        with httpx.Client(base_url=base, timeout=60.0) as client:
            def send(path: str, _rows: int) -> None:
                with open(path, "rb") as fh:
                    r = client.post("/v1/telemetry", content=fh.read(),
                                    headers={"Content-Type": "application/x-ndjson"})
                r.raise_for_status()
                os.unlink(path)

            from pipelines.simulation.output import simulate_to_dir, write_labels
            from pipelines.simulation.scenario import Scenario

            docs = simulate_to_dir([Scenario(c) for c in scenario_configs(sim_args)], outbox, "ndjson",
                                   10.0, a.pace, send)
            write_labels(docs, sim_args.labels)
            client.post("/v1/telemetry", content=fault_lines()).raise_for_status()
        print(f"sent {a.duration:.0f} s of telemetry in {time.monotonic() - t0:.0f} s; draining the service",
              file=sys.stderr)
    finally:
        code = service.stop()  # drains: the job reads everything landed, then ends
    if code != 0:
        raise RuntimeError(f"aura api did not shut down cleanly (exit {code}); see {service.log_path}")
    run_dir = os.path.join(root, "run")
    with open(os.path.join(run_dir, "summary.json")) as fh:
        summary = RunSummary.from_dict(json.load(fh))
    cascades = [c for d in docs for c in d["cascades"]]
    fizzles = [f for d in docs for f in d["fizzles"]]

    def when(t: float) -> str:
        return f"+{t - ScenarioConfig.start_epoch_s:.0f}s"

    verdict = outputs.latest_verdict(run_dir, "acme")
    extra = {"labels": sim_args.labels,
             "cascades (simulated)": ", ".join(f"{c['mechanism']} @ {when(c['onset'])}"
                                               for c in cascades) or "none",
             "fizzled triggers": ", ".join(f"{f['mechanism']} @ {when(f['trigger_time'])}"
                                           for f in fizzles) or "none",
             "latest committed risk": f"{verdict['probability']:.2f}" if verdict else "none",
             "interventions (dry run)": _count_lines(os.path.join(run_dir, "interventions.ndjson")),
             "service log": os.path.join(root, "api.log")}
    print(render_summary(summary, extra))
    from pipelines.incidents.story import tell

    print(tell(scenario_configs(sim_args)[0]))
    return 0 if summary.reconciles else 1


def _count_lines(path: str) -> str:
    if not os.path.exists(path):
        return "none"
    with open(path, "rb") as fh:
        n = sum(1 for _ in fh)
    db = os.path.join(os.path.dirname(path), "incidents.sqlite")
    return f"{n} in {path} (aura incident --db {db} list)"


# -- validate ------------------------------------------------------------------------------
def validate(a: argparse.Namespace) -> int:
    from pipelines.inputs import expand_inputs
    from pipelines.quality import check_frame, load_frame

    report = check_frame(load_frame(expand_inputs(a.input)), list(a.tenants) or None)
    text = report.render()
    print(text)
    if a.report:
        with open(a.report, "w") as fh:
            fh.write(text + "\n")
    return 0 if report.success else 1


# -- train / export ------------------------------------------------------------------------
def train_model(a: argparse.Namespace) -> int:
    import torch

    from models.artifact import (
        MODEL_DIR,
        TRITON_MODEL_DIR,
        export_checkpoint,
        save_checkpoint,
        write_metrics,
    )
    from models.train import TrainConfig, train
    from pipelines.training_data import DatasetConfig

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = TrainConfig(data=DatasetConfig(seed=a.seed, n_scenarios=a.scenarios, horizon_s=a.horizon),
                      epochs=a.epochs, seed=a.seed, calibration_windows=a.calibration_windows,
                      recorded_weight=a.recorded_weight)
    names = None
    if a.no_topology:
        if a.out is None:
            raise ValueError("--no-topology trains an ablation: give --out (the committed model stays)")
        from dataclasses import replace

        from pipelines.backtest.baselines import NON_TOPOLOGY, columns
        from pipelines.training_data import build_dataset

        if a.corpus:
            raise ValueError("--no-topology and --corpus do not go together")
        cols, names = columns(NON_TOPOLOGY), list(NON_TOPOLOGY)
        result = train(cfg, [replace(s, features=s.features[:, cols]) for s in build_dataset(cfg.data)],
                       names=names)
    elif a.corpus:
        from models.crossfit import operating_threshold
        from pipelines.backtest.ablation import to_training
        from pipelines.backtest.recorded import corpus_split
        from pipelines.training_data import build_dataset

        runs, windows = corpus_split(a.corpus, "calibration", a.horizon)  # never the evaluation runs
        data = build_dataset(cfg.data)
        op = operating_threshold(cfg, data, runs, windows, a.folds, a.budget)
        print(f"operating threshold {op['threshold']:.3f} (cross-fitted over {len(runs)} calibration runs: "
              f"{op['out_of_fold']['warned']}/{op['out_of_fold']['onsets']} onsets warned, "
              f"{op['out_of_fold']['false_alarms']} false alarms in {op['out_of_fold']['quiet_hours']:.2f} "
              f"quiet hours)")
        result = train(cfg, data, recorded=to_training(runs))
        result.metrics["operating_threshold"] = op
        result.metrics["corpus"] = os.path.abspath(a.corpus)
    else:
        result = train(cfg)
    out = a.out or MODEL_DIR
    os.makedirs(out, exist_ok=True)
    save_checkpoint(os.path.join(out, "checkpoint.pt"), result.model, cfg.seq_len, cfg.data.horizon_s,
                    result.data_hash, result.metrics,
                    result.calibration.to_dict() if result.calibration else None, names)
    export_checkpoint(os.path.join(out, "checkpoint.pt"), out, TRITON_MODEL_DIR if a.out is None else None)
    print(f"model, metadata and metrics in {out} ({write_metrics(result.metrics, out)})")
    return 0


def export_model(a: argparse.Namespace) -> int:
    from models.artifact import MODEL_DIR, TRITON_MODEL_DIR, export_checkpoint

    src = a.model_dir or MODEL_DIR
    onnx_path, meta_path = export_checkpoint(os.path.join(src, "checkpoint.pt"), a.out or src,
                                             TRITON_MODEL_DIR if a.out is None else None)
    print(f"exported {onnx_path} and {meta_path}")
    return 0


# -- serve -----------------------------------------------------------------------------------
def serve(a: argparse.Namespace) -> int:
    """A real tritonserver on 127.0.0.1 with the committed model, until SIGTERM or Ctrl-C."""
    import signal

    from pipelines.triton_server import TritonServer

    server = TritonServer(a.workdir, **({"http_port": a.http_port} if a.http_port else {}),
                          **({"grpc_port": a.grpc_port} if a.grpc_port else {}))
    os.makedirs(a.workdir, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"tritonserver (pid {server.process.pid}) serving cascade_cfc: gRPC 127.0.0.1:{server.grpc_port}, "
          f"HTTP 127.0.0.1:{server.http_port}; SIGTERM or Ctrl-C stops it", flush=True)
    try:
        while not stop.is_set() and server.process.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    code = server.stop()
    print(f"tritonserver stopped (exit {code})")
    return 0 if code == 0 else 1


# -- graph: sink replay, query -------------------------------------------------------------
def _add_graph_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="output/run",
                   help="the run's output folder (embedded graph in <out>/graph, spill file)")
    p.add_argument("--graph-uri", dest="graph_uri", help="Neo4j URI (default: $NEO4J_URI, else embedded)")
    p.add_argument("--graph-user", dest="graph_user")
    p.add_argument("--graph-password", dest="graph_password")
    p.add_argument("--graph-database", dest="graph_database")


def _graph_target(a: argparse.Namespace):
    from pipelines.graph.target import GraphSettings, graph_dir

    settings = GraphSettings(a.graph_uri, a.graph_user, a.graph_password, a.graph_database)
    if not settings.resolved().uri and not os.path.isdir(graph_dir(a.out)):
        raise FileNotFoundError(f"no embedded graph in {graph_dir(a.out)} (run `aura run --out {a.out}` "
                                "first, or give --graph-uri)")
    return settings


def sink_replay(a: argparse.Namespace) -> int:
    """Deliver the batches a run spilled (open_graph replays them before anything else)."""
    from pipelines.graph.sink import pending_batches
    from pipelines.graph.target import open_graph, spill_path

    path = spill_path(a.out)
    if not pending_batches(path):
        print(f"nothing to replay: no spilled batches in {path}")
        return 0
    with open_graph(_graph_target(a), a.out, log=print):
        pass
    left = pending_batches(path)
    return 0 if left == 0 else 1


def query(a: argparse.Namespace) -> int:
    """Agents most at risk now, a tenant's topology timeline, or one prediction."""
    from pipelines.graph import query as Q
    from pipelines.graph.target import open_graph

    if a.what in ("timeline", "prediction") and not a.tenant:
        raise ValueError(f"`aura query {a.what}` needs --tenant")
    with open_graph(_graph_target(a), a.out, replay=False, log=lambda m: print(m, file=sys.stderr)) as spec:
        sink_driver = spec.driver()
        try:
            if a.what == "at-risk":
                result = Q.at_risk(sink_driver, spec.database, a.tenant, a.limit)
            elif a.what == "timeline":
                result = Q.timeline(sink_driver, spec.database, a.tenant, a.limit)
            else:
                result = Q.prediction(sink_driver, spec.database, a.tenant, a.window)
        finally:
            sink_driver.close()
    print(Q.render(result, a.json))
    return 0 if result else 1


# -- audit ---------------------------------------------------------------------------------
def audit_verify(a: argparse.Namespace) -> int:
    """Verify every consensus audit log of a run: 0 when all check out."""
    from pipelines.consensus.audit import audit_logs, verify_log
    from pipelines.consensus.keys import load_committee

    pinned = load_committee(a.committee) if a.committee else None
    logs = audit_logs(a.path)
    if not logs or not os.path.exists(logs[0]):
        print(f"aura audit: error: no audit log at {a.path}", file=sys.stderr)
        return 2
    bad = 0
    for path in logs:
        r = verify_log(path, pinned)
        bad += not r.ok
        status = "ok" if r.ok else f"FAILED: {r.error}"
        print(f"{path}: {r.blocks} blocks, {r.verdicts} verdicts, {status}")
    if pinned is None and not bad:
        print("note: checked against the committee each log names; pin it with --committee")
    return 1 if bad else 0


def audit_keygen(a: argparse.Namespace) -> int:
    """Persistent validator keys and the committee file that pins them."""
    from pipelines.consensus.keys import COMMITTEE_FILE, write_keys

    committee = write_keys(a.dir, a.validators)
    print(f"{committee.n} validator keys (f = {committee.f}) in {a.dir}; "
          f"pin {os.path.join(a.dir, COMMITTEE_FILE)} with 'aura audit verify --committee'")
    return 0


# -- backtest ------------------------------------------------------------------------------
def _seeds(text: str) -> tuple[int, ...]:
    """"1000-1007" or "1,5,9" (or both, comma-separated)."""
    out: list[int] = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return tuple(out)


def add_backtest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="a directory of recorded NDJSON/Parquet telemetry (default: simulate)")
    p.add_argument("--labels", help="its labels file (default <input>/labels.json or <input>/../labels.json)")
    p.add_argument("--validation-tenants", dest="validation_tenants", type=_names,
                   help="with --input: tenants (comma-separated names or globs) whose thresholds are "
                        "frozen; default: the labels' split, else a hash of the name")
    p.add_argument("--test-tenants", dest="test_tenants", type=_names,
                   help="with --input: tenants scored as the test split (given one flag, the other split "
                        "is every other tenant; given both, a tenant in neither is not scored)")
    p.add_argument("--out", default="output/backtest", help="metrics.json, report.html, cache")
    p.add_argument("--model-dir", dest="model_dir", help="ONNX model + metadata (default: committed)")
    p.add_argument("--val-seeds", dest="val_seeds", type=_seeds,
                   help="validation scenario seeds, e.g. 1000-1007")
    p.add_argument("--test-seeds", dest="test_seeds", type=_seeds, help="in-distribution test seeds")
    p.add_argument("--ood-seeds", dest="ood_seeds", type=_seeds, help="out-of-distribution test seeds")
    p.add_argument("--ood-agents", dest="ood_agents", type=_seeds,
                   help="fleet sizes training never saw (400)")
    p.add_argument("--duration", dest="duration_s", type=float,
                   help="seconds per scenario (default: training's)")
    p.add_argument("--fit-scenarios", dest="fit_scenarios", type=int,
                   help="use only the first N training scenarios to fit baselines (quick runs)")
    p.add_argument("--fit-duration", dest="fit_duration_s", type=float,
                   help="(quick runs) shorter fit scenarios")
    p.add_argument("--false-alarm-budget", dest="false_alarm_budget", type=float,
                   help="false alarms per fleet-hour on validation that fix the operating threshold (1)")
    p.add_argument("--no-consensus", dest="consensus", action="store_false", default=None,
                   help="score predictions without validator agreement")
    p.add_argument("--validators", type=int, help="n = 3f+1 consensus validators (default 4)")
    p.add_argument("--ablation-epochs", dest="ablation_epochs", type=int,
                   help="(quick runs) epochs of the ablation")
    p.add_argument("--timelines", type=int, help="risk timelines in the report (default 4)")
    p.add_argument("--no-cache", dest="cache", action="store_false", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    c = p.add_argument_group("closed loop (--closed-loop: act on warnings in simulated fleets, four arms)")
    c.add_argument("--closed-loop", dest="closed_loop", action="store_true",
                   help="run held-out scenarios with no action / static rules / AURA / an oracle driving the "
                        "incident workflow; cascades prevented and requests lost")
    c.add_argument("--val-scenarios", dest="val_scenarios", type=int, help="validation scenarios (36)")
    c.add_argument("--test-scenarios", dest="test_scenarios", type=int, help="test scenarios (48)")
    c.add_argument("--agents", dest="loop_agents", type=_seeds, help="fleet sizes, cycled (60,100)")
    c.add_argument("--verdict-latency", dest="verdict_latency_s", type=float,
                   help="window close -> committed verdict, seconds (2.0; measured p99 1.66 s)")
    c.add_argument("--actuation-delay", dest="actuation_delay_s", type=float,
                   help="committed verdict -> action in effect, seconds (5.0)")
    c.add_argument("--jobs", type=int, help="worker processes (2)")


def closed_loop(a: argparse.Namespace) -> int:
    from pipelines.backtest.closed_loop import LoopConfig, run_closed_loop

    if a.input:
        raise ValueError("--closed-loop acts on simulated fleets: it does not take --input (recorded "
                         "telemetry cannot react to an action)")
    keys = {"out": "out", "model_dir": "model_dir", "val_scenarios": "val_scenarios",
            "test_scenarios": "test_scenarios", "loop_agents": "agents", "duration_s": "duration_s",
            "verdict_latency_s": "verdict_latency_s", "actuation_delay_s": "actuation_delay_s",
            "jobs": "jobs", "consensus": "consensus", "progress": "progress"}
    given = {dst: getattr(a, src) for src, dst in keys.items() if getattr(a, src) is not None}
    if "agents" in given:
        given["agents"] = tuple(given["agents"])
    if a.out == "output/backtest":
        given["out"] = "output/closed-loop"
    run_closed_loop(LoopConfig(**given))
    out = given["out"]
    print(f"report:  {os.path.join(out, 'report.html')}\nmetrics: {os.path.join(out, 'metrics.json')}")
    return 0


def backtest(a: argparse.Namespace) -> int:
    from pipelines.backtest.run import BacktestConfig, headline, run_backtest

    if a.closed_loop:
        return closed_loop(a)
    keys = ("input", "labels", "validation_tenants", "test_tenants", "out", "model_dir", "val_seeds",
            "test_seeds", "ood_seeds", "ood_agents", "duration_s", "fit_scenarios", "fit_duration_s",
            "false_alarm_budget", "consensus", "validators", "ablation_epochs", "timelines", "cache",
            "progress")
    cfg = BacktestConfig(**{k: getattr(a, k) for k in keys if getattr(a, k) is not None})
    metrics = run_backtest(cfg)
    print(headline(metrics))
    print(f"report:  {os.path.join(cfg.out, 'report.html')}\nmetrics: {os.path.join(cfg.out, 'metrics.json')}"
          f"\n({metrics['run']['elapsed_s']:.0f} s; pipeline {metrics['run']['pipeline']['events_per_s']:,} "
          f"events/s)")
    return 0 if metrics["run"]["pipeline"]["reconciles"] else 1


# -- api -----------------------------------------------------------------------------------
def add_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file: an [api] table, and a [run] table for the streaming job")
    p.add_argument("--host")
    p.add_argument("--port", type=int, help="default 4318, the OTLP/HTTP port")
    p.add_argument("--grpc-port", dest="grpc_port", type=int, help="OTLP/gRPC (default 4317)")
    p.add_argument("--no-grpc", dest="no_grpc", action="store_true", help="no OTLP/gRPC receiver")
    p.add_argument("--data-dir", dest="data_dir", help="spool, landing and the job's outputs "
                   "(default output/api)")
    p.add_argument("--default-tenant", dest="default_tenant")
    p.add_argument("--alertmanager-url", dest="alertmanager_url", help="e.g. http://127.0.0.1:9093")
    p.add_argument("--alert-webhook-url", dest="alert_webhook_url")
    p.add_argument("--external-url", dest="external_url", help="how people reach this service (alert links)")
    p.add_argument("--actuator", help="where the incident workflow's interventions go: dry-run[:PATH] "
                   "(default dry-run:<data-dir>/run/interventions.ndjson), webhook:URL, or off (no workflow)")
    p.add_argument("--approve-above", dest="approve_above", type=float,
                   help="actions costing more than this share of requests wait for `aura incident approve` "
                   "(default 0.2)")
    p.add_argument("--validator-processes", dest="validator_processes", action="store_true", default=None,
                   help="run the job's consensus validators as supervised processes of their own (TCP), "
                   "not inside the job")
    p.add_argument("--metrics-top-agents", dest="metrics_top_agents", type=int,
                   help="per-agent series on /metrics: this many agents per tenant, worst first (default 10)")
    p.add_argument("--backtest-report", dest="backtest_report",
                   help="a closed-loop backtest's metrics.json: its headline figures on /metrics")
    p.add_argument("--no-job", dest="start_job", action="store_false", default=None,
                   help="ingest only: the streaming job runs elsewhere on <data-dir>/landing")
    add_otlp_arg(p)
    p.add_argument("--log-format", dest="log_format", choices=("json", "text"),
                   help="the service's log lines: JSON (one object per line, with tenant, window and trace "
                   "ids; the default) or text (default: $AURA_LOG_FORMAT, else json)")
    p.add_argument("--no-graph", dest="graph", action="store_false", default=None)


def load_service_config(a: argparse.Namespace):
    """The service's ApiConfig and its job's RunConfig (file, then AURA_API_* / AURA_RUN_*, then flags)."""
    from pipelines.config import load_api_config, load_run_config

    keys = ("host", "port", "grpc_port", "data_dir", "default_tenant", "alertmanager_url",
            "alert_webhook_url", "external_url", "start_job", "actuator", "approve_above",
            "validator_processes", "metrics_top_agents", "backtest_report")
    api = load_api_config(a.config, **{k: getattr(a, k, None) for k in keys})
    if getattr(a, "no_grpc", False):
        api.grpc_port = None
    run = load_run_config(a.config, landing=os.path.join(api.data_dir, "landing"),
                          out=os.path.join(api.data_dir, "run"), graph=getattr(a, "graph", None))
    return api, run


def api(a: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from pipelines import tracing
    from pipelines.logs import FORMAT_ENV, configure_logging, log_format, service_log
    from pipelines.service.app import create_app

    os.environ[FORMAT_ENV] = configure_logging(log_format(a.log_format, default="json"))  # children too
    api_cfg, run_cfg = load_service_config(a)
    if tracing.configure("aura-api", a.otlp_endpoint):  # the job (a child) traces to the same place
        service_log(f"aura api: traces of AURA itself to {tracing.endpoint()}")
    app = create_app(api_cfg, run_cfg)
    service_log(f"aura api on http://{api_cfg.host}:{api_cfg.port} (OTLP/HTTP: POST /v1/traces; "
                f"docs: /docs); data in {api_cfg.data_dir}")

    def exit_after_drain(*_):  # uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully
        raise SystemExit(0 if app.state.aura.drained else 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, exit_after_drain)
    uvicorn.run(app, host=api_cfg.host, port=api_cfg.port, log_level="warning", access_log=False,
                log_config=None)  # uvicorn's own records through our handler (JSON lines)
    return 0 if app.state.aura.drained else 1


# -- entry point ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aura", description="AURA: early warning for cascading "
                                     "failures in fleets of agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_simulate_args(sub.add_parser("simulate", help="simulate a fleet: telemetry + cascade labels"))
    add_run_args(sub.add_parser("run", help="window telemetry into per-tenant snapshots (Beam)"))
    d = sub.add_parser("demo", help="simulate into a landing directory while `run` streams it")
    d.add_argument("--out", default="output/demo")
    d.add_argument("--agents", type=int, default=200)
    d.add_argument("--duration", type=float, default=600.0)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--pace", type=float, default=0.05, help="wall seconds between landed files")
    d.add_argument("--no-progress", action="store_true")
    t = sub.add_parser("train", help="train the CfC on simulated scenarios; write the artifact")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--scenarios", type=int, default=192)
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--horizon", type=float, default=60.0, help="seconds ahead a cascade is predicted")
    t.add_argument("--out", help="artifact directory (default: the committed models/cascade_cfc)")
    t.add_argument("--calibration-windows", type=int, default=6,
                   help="inputs relative to each tenant's first N windows (0: raw features; default 6)")
    t.add_argument("--corpus", help="a testbed corpus (`aura corpus`): train on its calibration runs too, "
                                    "and cross-fit the operating threshold on them")
    t.add_argument("--recorded-weight", type=float, default=10.0,
                   help="loss weight of a recorded window against a simulated one (default 10)")
    t.add_argument("--no-topology", action="store_true",
                   help="the ablation: the classic features only, no persistent homology (needs --out)")
    t.add_argument("--folds", type=int, default=3,
                   help="cross-fitting folds over the corpus runs (default 3)")
    t.add_argument("--budget", type=float, default=1.0,
                   help="false alarms per quiet fleet-hour the operating threshold allows (default 1)")
    e = sub.add_parser("export", help="re-export the checkpoint to ONNX + metadata")
    e.add_argument("--model-dir", help="directory with checkpoint.pt (default models/cascade_cfc)")
    e.add_argument("--out", help="where to write (default: in place, and into triton_repo)")
    sv = sub.add_parser("serve", help="serve the model from a local tritonserver (127.0.0.1)")
    sv.add_argument("--workdir", default="output/triton")
    sv.add_argument("--http-port", type=int)
    sv.add_argument("--grpc-port", type=int)
    sk = sub.add_parser("sink", help="graph sink maintenance")
    sk_sub = sk.add_subparsers(dest="sink_command", required=True)
    _add_graph_target_args(sk_sub.add_parser("replay", help="deliver the batches a run spilled"))
    q = sub.add_parser("query", help="read the graph: agents at risk, topology timeline, a prediction")
    q.add_argument("what", choices=("at-risk", "timeline", "prediction"))
    q.add_argument("--tenant")
    q.add_argument("--window", type=int, help="prediction: window start (epoch ms); default the latest")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_graph_target_args(q)
    au = sub.add_parser("audit", help="the consensus audit log")
    au_sub = au.add_subparsers(dest="audit_command", required=True)
    av = au_sub.add_parser("verify", help="check hashes, chain and signatures end to end")
    av.add_argument("path", help="a run's output directory, its audit/ directory, or one log file")
    av.add_argument("--committee", help="committee.json (or its key directory) the logs must name")
    ak = au_sub.add_parser("keygen", help="persistent validator keys + committee.json")
    ak.add_argument("dir", help="new key directory (existing keys are never overwritten)")
    ak.add_argument("--validators", type=int, default=4, help="n = 3f+1 (default 4)")
    add_backtest_args(sub.add_parser("backtest", help="score cascade predictions and baselines on "
                                     "held-out labelled telemetry (Beam batch); report.html + metrics.json"))
    add_api_args(sub.add_parser("api", help="the service: OTLP + native telemetry in, risk / windows / "
                                "incidents / agents out, alerts to Alertmanager; runs the streaming job"))
    from pipelines.testbed.cli import add_corpus_args, add_testbed_args

    add_testbed_args(sub.add_parser("testbed", help="a real fleet of traced agent processes on loopback, "
                                    "exporting OTLP to aura api; triggers, onsets, labels"))
    add_corpus_args(sub.add_parser("corpus", help="record the testbed corpus: a family of real-process "
                                   "fleets, traces as native telemetry, onsets as labels, calibration and "
                                   "evaluation splits"))
    from pipelines.incidents.store import add_incident_args

    add_incident_args(sub.add_parser("incident", help="the incident workflow's incidents (SQLite "
                                     "checkpoints): list, show ID, replay ID --from STEP, approve ID"))
    v = sub.add_parser("validate", help="Great Expectations checks on a telemetry batch")
    v.add_argument("input", help="file, directory or glob")
    v.add_argument("--tenants", type=_names, default=(), help="allowed tenants (comma-separated)")
    v.add_argument("--report", help="also write the report to this file")
    return parser


def _stopped(a: argparse.Namespace, err: BaseException) -> int:
    """A streaming job that failed (a full disk, a dead dependency): say why in one line and
    how to go on; what was not final stays in the landing directory (docs/GUARANTEES.md)."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    why = lines[-1] if lines else type(err).__name__
    print(f"aura run: error: the streaming job stopped: {why}\n"
          f"aura run: files whose windows were not final stay in {a.landing or 'the landing directory'}; "
          f"run the same command "
          f"again once this is fixed: the ledger in the output directory makes it lose nothing",
          file=sys.stderr)
    return 3


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR)
    a = build_parser().parse_args(argv)
    try:
        if a.command == "simulate":
            simulate(a)
            return 0
        if a.command == "run":
            job_observability(a)
            try:
                summary = run_job(a)
            except (OSError, RuntimeError, sqlite3.Error) as err:
                if not (a.landing or a.config) or isinstance(err, FileNotFoundError):
                    raise
                return _stopped(a, err)
            print(render_summary(summary))
            return 0 if summary.reconciles else 1
        if a.command == "demo":
            return demo(a)
        if a.command == "train":
            return train_model(a)
        if a.command == "export":
            return export_model(a)
        if a.command == "sink":
            return sink_replay(a)
        if a.command == "query":
            return query(a)
        if a.command == "serve":
            return serve(a)
        if a.command == "backtest":
            return backtest(a)
        if a.command == "api":
            return api(a)
        if a.command == "testbed":
            from pipelines.testbed.cli import testbed_main

            return testbed_main(a)
        if a.command == "corpus":
            from pipelines.testbed.cli import corpus_main

            return corpus_main(a)
        if a.command == "incident":
            from pipelines.incidents.store import incident_main

            return incident_main(a)
        if a.command == "audit":
            return audit_keygen(a) if a.audit_command == "keygen" else audit_verify(a)
        return validate(a)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"aura {a.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
