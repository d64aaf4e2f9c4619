"""What runs beside the service's HTTP handlers: the spool worker, the streaming job, the
graph server and the alert service; started together, stopped in order by PID.

Layout of ``data_dir``: ``spool/`` (accepted OTLP requests), ``ingest/`` (the spool worker's
ledger and span dead letters), ``landing/`` (telemetry files for the streaming job),
``run/`` (the job's outputs, graph data and incidents), ``run.toml`` (the job's exact
configuration), ``logs/`` (children's output).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace

from pipelines.config import ApiConfig, RunConfig, run_config_toml
from pipelines.service.processes import Child, spawn, wait_until


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
    def ingest_deadletter(self) -> str:
        return os.path.join(self.ingest, "deadletter")

    def make(self) -> ServicePaths:
        for d in (self.spool, self.ingest, self.ingest_deadletter, self.landing, self.run, self.logs):
            os.makedirs(d, exist_ok=True)
        return self


class ServiceRuntime:
    """Starts and stops the service's children. ``start_job = false`` runs the ingest side only
    (the job and graph then run elsewhere, reading ``landing/`` and writing ``run/``)."""

    def __init__(self, api: ApiConfig, run: RunConfig, log=lambda m: print(m, file=sys.stderr)):
        self.api, self.paths = api, ServicePaths(api.data_dir).make()
        self.run = replace(run, landing=self.paths.landing, out=self.paths.run, input=None, mode="streaming")
        self.log = log
        self.worker: Child | None = None
        self.job: Child | None = None
        self.graph_uri: str | None = None
        self._graph_auth: tuple[str, str] | None = None
        self._driver = None
        self._stack = contextlib.ExitStack()
        self.alerts = None

    def start(self) -> ServiceRuntime:
        for stop in (os.path.join(self.paths.spool, "_STOP"), os.path.join(self.paths.landing, "_STOP")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stop)  # left by the last clean shutdown
        a = self.api
        args = ["-m", "pipelines.service.spool_worker", "--spool", self.paths.spool,
                "--landing", self.paths.landing, "--ingest-dir", self.paths.ingest,
                "--default-tenant", a.default_tenant, "--grace", str(a.grace_s),
                "--idle-flush", str(a.idle_flush_s)]
        self.worker = spawn("spool-worker", args, self.paths.logs)
        self.log(f"aura api: spool worker pid {self.worker.pid}")
        if a.start_job:
            self._start_job()
        self._start_alerts()
        return self

    def _start_job(self) -> None:
        env = {}
        run = self.run
        if run.graph:
            from pipelines.graph.target import open_graph

            spec = self._stack.enter_context(open_graph(run.graph_settings(), run.out, log=self.log))
            self.graph_uri, self._graph_auth = spec.uri, (spec.user, spec.password)
            run = replace(run, graph_uri=spec.uri, graph_user=spec.user, graph_database=spec.database)
            env["NEO4J_PASSWORD"] = spec.password  # never written to run.toml
        toml = os.path.join(self.paths.root, "run.toml")
        with open(toml, "w") as fh:
            fh.write(run_config_toml(replace(run, graph_password=None)))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._running_file)
        # run.toml is the job's whole, resolved configuration: AURA_RUN_* must not override it again
        # (the service forced landing and out, which the environment could otherwise move)
        self.job = spawn("job", ["-m", "pipelines.cli", "run", "--config", toml, "--no-progress"],
                         self.paths.logs, env, drop_env_prefix="AURA_RUN_")
        self.log(f"aura api: streaming job pid {self.job.pid} (landing {run.landing}, out {run.out})")

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
        if self.alerts is not None:
            self.alerts.stop()
        if self._driver is not None:
            self._driver.close()
        self._stack.close()
        return clean
