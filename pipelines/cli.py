"""The ``aura`` command line: simulate, run, demo, validate."""

from __future__ import annotations

import argparse
import json
import logging
import os
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
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=float,
                   help="landing: stop after this many seconds without new files")
    p.add_argument("--max-runtime", dest="max_runtime_s", type=float)
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


def run_job(a: argparse.Namespace, progress_total: int | None = None):
    from pipelines.beam import job
    from pipelines.config import load_run_config
    from pipelines.stream_source import LandingDirectory

    cfg = load_run_config(a.config, input=a.input, landing=a.landing, out=a.out, mode=a.mode,
                          window_size_s=a.window_size_s, window_slide_s=a.window_slide_s,
                          allowed_lateness_s=a.allowed_lateness_s,
                          max_out_of_orderness_s=a.max_out_of_orderness_s,
                          idle_timeout_s=a.idle_timeout_s, max_runtime_s=a.max_runtime_s,
                          features=a.features, ph_backend=a.ph_backend,
                          comove_max_points=a.comove_max_points, predict=a.predict, model_dir=a.model_dir,
                          predictor=a.predictor, triton_url=a.triton_url, triton_protocol=a.triton_protocol)
    spec, extractor, predictor = cfg.window_spec(), cfg.extractor(), cfg.predictor_spec()
    bar = None if a.no_progress else _progress(progress_total)
    if cfg.landing:
        on_file = (lambda _p, st: bar.update(st.read - bar.n)) if bar else None
        source = LandingDirectory(cfg.landing, spec, max_out_of_orderness_s=cfg.max_out_of_orderness_s,
                                  poll_interval_s=cfg.poll_interval_s, idle_timeout_s=cfg.idle_timeout_s,
                                  max_runtime_s=cfg.max_runtime_s, guard=cfg.guard(), on_file=on_file)
        summary = job.run_landing(source, cfg.out, extractor, predictor)
    else:
        paths = job.expand_inputs(cfg.input)
        if bar is not None:
            bar.total = len(paths)
            bar.unit = "file"
        if cfg.mode == "batch":
            summary = job.run_batch(paths, spec, cfg.out, extractor, predictor)
        else:
            summary = job.run_files_streaming(paths, spec, cfg.out, cfg.max_out_of_orderness_s,
                                              cfg.guard(), extractor, predictor)
        if bar is not None:
            bar.update(len(paths))
    if bar is not None:
        bar.close()
    with open(os.path.join(cfg.out, "summary.json"), "w") as fh:
        json.dump(summary.to_dict(), fh, indent=2)
    return summary


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
    rows += [
             ("reconciles (in = windowed + dead)", "yes" if s.reconciles else "NO"),
             ("elapsed", f"{s.elapsed_s:.1f} s"),
             ("throughput", f"{s.read / max(s.elapsed_s, 1e-9):,.0f} records/s"),
             ("snapshots", os.path.join(s.out_dir, "snapshots")),
             ("features", os.path.join(s.out_dir, "features")),
             ("predictions", os.path.join(s.out_dir, "predictions")),
             ("dead letters", os.path.join(s.out_dir, "deadletter"))]
    rows += list((extra or {}).items())
    width = max(len(str(k)) for k, _ in rows)
    line = "-" * (width + 40)
    return "\n".join([line] + [f"{k:<{width}}  {v}" for k, v in rows] + [line])


# -- demo ----------------------------------------------------------------------------------
def write_fault_file(landing: str) -> None:
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
    tmp = os.path.join(landing, "zz-faults.ndjson.tmp")
    with open(tmp, "w") as fh:
        fh.write("\n".join(bad) + "\n")
    os.replace(tmp, tmp[:-4])


DEMO_SEVERITIES = (0.05, 0.95, 0.1)  # a fizzle, a cascade, a fizzle (mechanisms cycle)


def demo(a: argparse.Namespace) -> int:
    """Simulate a 200-agent fleet into a landing directory while the streaming job reads it."""
    import shutil

    root = a.out
    shutil.rmtree(root, ignore_errors=True)
    landing = os.path.join(root, "landing")
    os.makedirs(landing)
    sim_args = argparse.Namespace(
        out=landing, labels=os.path.join(root, "labels.json"), agents=a.agents, duration=a.duration,
        tick=1.0, seed=a.seed, graph="layered", mechanisms=MECHANISMS, severities=DEMO_SEVERITIES,
        tenant="acme", tenants=1, format="ndjson", file_seconds=10.0, start=ScenarioConfig.start_epoch_s)
    result: dict = {}
    failure: list[BaseException] = []

    def produce():
        try:
            result.update(simulate(sim_args, pace_s=a.pace, quiet=True))
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            failure.append(err)
        finally:
            write_fault_file(landing)  # a few bad and late records, to show the dead letters
            open(os.path.join(landing, "_STOP"), "w").close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    run_args = argparse.Namespace(config=None, input=None, landing=landing, out=os.path.join(root, "run"),
                                  mode="streaming", window_size_s=None, window_slide_s=None,
                                  allowed_lateness_s=None, max_out_of_orderness_s=None,
                                  idle_timeout_s=None, max_runtime_s=None, no_progress=a.no_progress,
                                  features=None, ph_backend=None, comove_max_points=None,
                                  predict=None, model_dir=None, predictor=None, triton_url=None,
                                  triton_protocol=None)
    summary = run_job(run_args, progress_total=int(a.agents * a.duration))
    producer.join()
    if failure:
        raise failure[0]
    docs = result["docs"]
    cascades = [c for d in docs for c in d["cascades"]]
    fizzles = [f for d in docs for f in d["fizzles"]]
    def when(t: float) -> str:
        return f"+{t - ScenarioConfig.start_epoch_s:.0f}s"

    extra = {"labels": result["labels"],
             "cascades (simulated)": ", ".join(f"{c['mechanism']} @ {when(c['onset'])}"
                                               for c in cascades) or "none",
             "fizzled triggers": ", ".join(f"{f['mechanism']} @ {when(f['trigger_time'])}"
                                           for f in fizzles) or "none"}
    print(render_summary(summary, extra))
    return 0 if summary.reconciles else 1


# -- validate ------------------------------------------------------------------------------
def validate(a: argparse.Namespace) -> int:
    from pipelines.beam.job import expand_inputs
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
                      epochs=a.epochs, seed=a.seed)
    result = train(cfg)
    out = a.out or MODEL_DIR
    os.makedirs(out, exist_ok=True)
    save_checkpoint(os.path.join(out, "checkpoint.pt"), result.model, cfg.seq_len, cfg.data.horizon_s,
                    result.data_hash, result.metrics)
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
    t.add_argument("--scenarios", type=int, default=48)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--horizon", type=float, default=60.0, help="seconds ahead a cascade is predicted")
    t.add_argument("--out", help="artifact directory (default: the committed models/cascade_cfc)")
    e = sub.add_parser("export", help="re-export the checkpoint to ONNX + metadata")
    e.add_argument("--model-dir", help="directory with checkpoint.pt (default models/cascade_cfc)")
    e.add_argument("--out", help="where to write (default: in place, and into triton_repo)")
    sv = sub.add_parser("serve", help="serve the model from a local tritonserver (127.0.0.1)")
    sv.add_argument("--workdir", default="output/triton")
    sv.add_argument("--http-port", type=int)
    sv.add_argument("--grpc-port", type=int)
    v = sub.add_parser("validate", help="Great Expectations checks on a telemetry batch")
    v.add_argument("input", help="file, directory or glob")
    v.add_argument("--tenants", type=_names, default=(), help="allowed tenants (comma-separated)")
    v.add_argument("--report", help="also write the report to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR)
    a = build_parser().parse_args(argv)
    try:
        if a.command == "simulate":
            simulate(a)
            return 0
        if a.command == "run":
            summary = run_job(a)
            print(render_summary(summary))
            return 0 if summary.reconciles else 1
        if a.command == "demo":
            return demo(a)
        if a.command == "train":
            return train_model(a)
        if a.command == "export":
            return export_model(a)
        if a.command == "serve":
            return serve(a)
        return validate(a)
    except (ValueError, FileNotFoundError) as err:
        print(f"aura {a.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
