"""What runs beside the service's HTTP handlers: the spool worker, the streaming job, the
graph server and the alert service; started together, stopped in order by PID, and
supervised: a child that dies is started again (with back-off), and each one picks up where
its predecessor stopped (the spool worker's and the job's ledgers). Children die with the
service; the PIDs of a killed service's children (``_children.json``) are reaped at start.

Layout of ``data_dir``: ``spool/`` (accepted OTLP requests), ``ingest/`` (the spool worker's
ledger and span dead letters), ``landing/`` (telemetry files for the streaming job),
``run/`` (the job's outputs, graph data and incidents), ``run.toml`` (the job's exact
configuration), ``logs/`` (children's output).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

from pipelines import tracing
from pipelines.config import ApiConfig, RunConfig, run_config_toml
from pipelines.logs import service_log
from pipelines.service.durable import write_durably
from pipelines.service.processes import Child, kill_stale, spawn, wait_until

CHILDREN = "_children.json"
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class ServicePaths:
    root: str

    @property
    def spool(self) -> str:
        return os.path.join(self.root, "spool")

    @property
    def ingest(self) -> str:
        return os.path.join(self.root, "ingest")

    @property
    def landing(self) -> str:
        return os.path.join(self.root, "landing")

    @property
    def run(self) -> str:
        return os.path.join(self.root, "run")

    @property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    @property
    def metrics(self) -> str:
        """The job's Prometheus metrics (multiprocess mode), served on the service's /metrics."""
        return os.path.join(self.root, "metrics")

    @property
    def ingest_deadletter(self) -> str:
        return os.path.join(self.ingest, "deadletter")

    def make(self) -> ServicePaths:
        for d in (self.spool, self.ingest, self.ingest_deadletter, self.landing, self.run, self.logs,
                  self.metrics):
            os.makedirs(d, exist_ok=True)
        return self


class ServiceRuntime:
    """Starts and stops the service's children. ``start_job = false`` runs the ingest side only
    (the job and graph then run elsewhere, reading ``landing/`` and writing ``run/``)."""

    def __init__(self, api: ApiConfig, run: RunConfig, log=service_log):
        self.api, self.paths = api, ServicePaths(api.data_dir).make()
        self.run = replace(run, landing=self.paths.landing, out=self.paths.run, input=None, mode="streaming")
        if self.run.engine == "flink":  # a job started again restores its newest checkpoint
            self.run = replace(self.run, checkpoint_dir=self.run.checkpoint_dir
                               or os.path.join(self.paths.run, "checkpoints"), restore_from="latest")
        self.log = log
        self.worker: Child | None = None
        self.job: Child | None = None
        self.graph_uri: str | None = None
        self._graph_auth: tuple[str, str] | None = None
        self._driver = None
        self._stack = contextlib.ExitStack()
        self.alerts = None
        self.restarts: Counter = Counter()  # child -> times started again after it died
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # held while the supervisor starts a child again
        self._watcher: threading.Thread | None = None
        self._job_args: tuple[list[str], dict[str, str]] | None = None
        self.validators = None  # ValidatorProcesses with ``validator_processes``
        self.graph_server = None  # the embedded Bolt server, when the service started one
        self._graph_replacement = None  # a server started again after the first one died

    def start(self) -> ServiceRuntime:
        stale = self._read_children()
        if stale:  # a killed service's children would race ours for the spool and the landing dir
            for who in kill_stale(stale):
                self.log(f"aura api: stopped {who}, left running by a service that was killed")
        for stop in (os.path.join(self.paths.spool, "_STOP"), os.path.join(self.paths.landing, "_STOP")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stop)  # left by the last clean shutdown
        self.worker = self._spawn_worker()
        if self.api.start_job:
            if self.api.validator_processes and self.run.consensus:
                self._start_validators()
            self._start_job()
        self._write_children()
        self._start_alerts()
        self._watcher = threading.Thread(target=self._watch, name="aura-supervisor", daemon=True)
        self._watcher.start()
        return self

    def _start_validators(self) -> None:
        """The job's n validators as processes (a new chain each time the service starts); the
        job reaches them through ``validators.json`` (``--validators-at``)."""
        from pipelines.inference import DEFAULT_MODEL_DIR
        from pipelines.service.validators import ValidatorProcesses, write_validator_config

        r = self.run
        path = os.path.join(self.paths.root, "validators.json")
        kinds = [k.strip() for k in r.validator_backends.split(",") if k.strip()]
        write_validator_config(path, r.validators, "onnx", model_dir=r.model_dir or DEFAULT_MODEL_DIR,
                               predictors=kinds * r.validators if len(kinds) == 1 else kinds,
                               epsilon=r.consensus_epsilon, bands=r.bands(), max_block=r.max_block,
                               base_timeout=0.3, commit_timeout_s=10.0, key_dir=r.validator_keys,
                               triton_url=r.triton_url, triton_protocol=r.triton_protocol)
        self.validators = ValidatorProcesses(path, None, self.paths.logs).start()
        if not self.validators.wait_ready(60):
            self.log("aura api: not every validator answered within 60 s (the job commits with 2f+1)")
        self.log(f"aura api: {r.validators} validators as processes {self.validators.pids()} ({path})")
        self.run = replace(r, validators_at=path, validator_keys=None)

    def _spawn_worker(self) -> Child:
        a = self.api
        args = ["-m", "pipelines.service.spool_worker", "--spool", self.paths.spool,
                "--landing", self.paths.landing, "--ingest-dir", self.paths.ingest,
                "--default-tenant", a.default_tenant, "--grace", str(a.grace_s),
                "--idle-flush", str(a.idle_flush_s)]
        child = spawn("spool-worker", args, self.paths.logs)
        self.log(f"aura api: spool worker pid {child.pid}")
        return child

    # -- supervision ---------------------------------------------------------------------
    @property
    def _children_path(self) -> str:
        return os.path.join(self.paths.root, CHILDREN)

    def _read_children(self) -> dict[str, int]:
        try:
            with open(self._children_path) as fh:
                return {k: int(v) for k, v in json.load(fh).items()}
        except (FileNotFoundError, ValueError):
            return {}

    def _embedded(self, server) -> None:
        self.graph_server = server

    def _write_children(self) -> None:
        pids = {c.name: c.pid for c in (self.worker, self.job) if c is not None}
        if self.validators is not None:
            pids.update(self.validators.pids())
        if self.graph_server is not None and self.graph_server.process is not None:
            pids["graph"] = self.graph_server.process.pid  # its own session: it outlives a killed service
        write_durably(self.paths.root, CHILDREN, json.dumps(pids).encode())

    def _watch(self) -> None:
        """Start again any child that died (not while stopping), waiting 1, 2, 4 ... 30 s
        between attempts for a child that keeps dying."""
        due: dict[str, float] = {}
        while not self._stopping.wait(0.5):
            with self._lock:
                if not self._stopping.is_set():
                    self._watch_once(due)
        # children started here die when this thread ends (PR_SET_PDEATHSIG): it never does
        threading.Event().wait()

    def _watch_once(self, due: dict[str, float]) -> None:
        """One look at every child: start again those that died and whose back-off is over."""
        for name in ("worker", "job"):
            child: Child | None = getattr(self, name)
            if child is None or child.alive():
                continue
            now = time.monotonic()
            if name not in due:
                wait = min(MAX_BACKOFF_S, 2.0 ** min(self.restarts[child.name], 5) / 2)
                due[name] = now + wait
                self.log(f"aura api: {child.name} (pid {child.pid}) exited with "
                         f"{child.process.returncode}; starting it again in {wait:.0f} s\n"
                         f"{child.log_tail(8)}")
            if now < due[name]:
                continue
            del due[name]
            self.restarts[child.name] += 1
            setattr(self, name, self._spawn_worker() if name == "worker" else self._spawn_job())
            self._write_children()
        if self.validators is not None:
            back = self.validators.restart_dead()
            for rid in back:
                self.restarts[f"validator-{rid}"] += 1
                self.log(f"aura api: validator {rid} died; started it again")
            if back:
                self._write_children()
        self._watch_graph()

    def _watch_graph(self) -> None:
        """The embedded graph server died: start it again on the same port and data (the
        job's sink spills meanwhile and delivers the spill when it is back)."""
        srv = self.graph_server
        if srv is None or srv.process is None or srv.process.poll() is None or self._stopping.is_set():
            return
        from pipelines.graph.server import EmbeddedGraphServer

        self.log(f"aura api: graph server (pid {srv.process.pid}) exited with {srv.process.returncode}; "
                 f"starting it again on port {srv.bolt_port}")
        self.restarts["graph"] += 1
        try:
            new = EmbeddedGraphServer(srv.root, bolt_port=srv.bolt_port, password=srv.password).start()
        except (RuntimeError, TimeoutError) as err:
            self.log(f"aura api: graph server did not start again: {err}")
            return
        self.graph_server = self._graph_replacement = new
        self._write_children()

    def _start_job(self) -> None:
        env = {"PROMETHEUS_MULTIPROC_DIR": self.paths.metrics}  # its metrics, on our /metrics
        env.update(self._observability_env())
        run = self.run
        if run.graph:
            from pipelines.graph.target import open_graph

            spec = self._stack.enter_context(open_graph(run.graph_settings(), run.out, log=self.log,
                                                        on_server=self._embedded))
            self.graph_uri, self._graph_auth = spec.uri, (spec.user, spec.password)
            run = replace(run, graph_uri=spec.uri, graph_user=spec.user, graph_database=spec.database)
            env["NEO4J_PASSWORD"] = spec.password  # never written to run.toml
        toml = os.path.join(self.paths.root, "run.toml")
        with open(toml, "w") as fh:
            fh.write(run_config_toml(replace(run, graph_password=None)))
        # run.toml is the job's whole, resolved configuration: AURA_RUN_* must not override it again
        # (the service forced landing and out, which the environment could otherwise move)
        self._job_args = (["-m", "pipelines.cli", "run", "--config", toml, "--no-progress"], env)
        self.job = self._spawn_job()

    @staticmethod
    def _observability_env() -> dict[str, str]:
        """The job traces to where the service does (``aura api --otlp-endpoint``; OTLP variables
        it inherits anyway); it logs as ``$AURA_LOG_FORMAT`` says, which ``aura api`` sets."""
        return {tracing.TRACES_ENV: tracing.endpoint()} if tracing.endpoint() else {}

    def _spawn_job(self) -> Child:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._running_file)
        args, env = self._job_args
        child = spawn("job", args, self.paths.logs, env, drop_env_prefix="AURA_RUN_")
        self.log(f"aura api: streaming job pid {child.pid} (landing {self.run.landing}, out {self.run.out})")
        return child

    def _start_alerts(self) -> None:
        from pipelines.service.alerting import start_alerts

        self.alerts = start_alerts(self.api, self.run, self.log)

    def graph_driver(self):
        """The service's neo4j driver for reads (one, pooled, made at first use; closed by
        ``stop``), or None without a graph."""
        if self.graph_uri is None:
            return None
        if self._driver is None:
            from neo4j import GraphDatabase

            self._driver = GraphDatabase.driver(self.graph_uri, auth=self._graph_auth)
        return self._driver

    @property
    def _running_file(self) -> str:
        from pipelines.cli import RUNNING

        return os.path.join(self.paths.run, RUNNING)

    def job_running(self) -> bool:
        """The job process is alive and its pipeline reads the landing directory (warmed up)."""
        if not (self.job and self.job.alive()):
            return False
        try:
            with open(self._running_file) as fh:
                return fh.read().strip() == str(self.job.pid)
        except FileNotFoundError:
            return False

    def checks(self) -> dict[str, bool]:
        """Readiness: every part that should run does."""
        out = {"spool_worker": bool(self.worker and self.worker.alive())}
        if self.api.start_job:
            out["job"] = self.job_running()
            if self.run.graph:
                from pipelines.graph.server import ready

                out["graph"] = bool(self.graph_uri) and ready(self.graph_uri, self._graph_auth)
        return out

    def stop(self) -> bool:
        """Drain in order: the spool (all spans sealed and landed), then the job, then the rest;
        whether everything finished by itself in time."""
        timeout_s = self.api.drain_timeout_s
        clean = True
        self._stopping.set()
        with self._lock:  # no child is being started again from here on
            pass
        if self.worker is not None:
            open(os.path.join(self.paths.spool, "_STOP"), "w").close()
            if self.worker.wait(timeout_s) is None:
                self.log("aura api: spool worker did not drain in time; stopping it")
            clean &= self.worker.stop() == 0
        if self.job is not None:
            open(os.path.join(self.paths.landing, "_STOP"), "w").close()
            if not wait_until(lambda: not self.job.alive(), timeout_s, 0.2):
                self.log("aura api: streaming job did not finish in time; stopping it")
            code = self.job.stop()
            if code != 0:
                self.log(f"aura api: streaming job exited with {code}:\n{self.job.log_tail()}")
            clean &= code == 0
        if self.validators is not None:  # after the job: it may still commit while it drains
            self.validators.stop()
        if self.alerts is not None:
            self.alerts.stop()
        if self._driver is not None:
            self._driver.close()
        self._stack.close()
        if self._graph_replacement is not None:
            self._graph_replacement.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._children_path)
        return clean
