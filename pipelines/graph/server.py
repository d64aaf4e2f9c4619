"""An embedded Bolt server for local runs: ArcadeDB with its Bolt plugin (PyPI
``arcadedb-embedded``), in a child process on 127.0.0.1, started and stopped by PID.

``python -m pipelines.graph.server --root DIR --bolt-port P --http-port Q`` runs the server
until SIGTERM; ``EmbeddedGraphServer`` starts that process, waits until the official
``neo4j`` driver can run a query, and stops (SIGTERM) or kills (SIGKILL) it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from pipelines.triton_server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATABASE = "neo4j"
USER = "root"
DEFAULT_PASSWORD = "aura-local-graph"  # loopback only, a throwaway local database


@dataclass
class EmbeddedGraphServer:
    """The embedded ArcadeDB Bolt server as a child process (data under ``root``)."""

    root: str
    bolt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    password: str = DEFAULT_PASSWORD
    heap: str = "1g"
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, self.password

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "server.log")

    def start(self, timeout_s: float = 90.0) -> EmbeddedGraphServer:
        """Start the child process and wait until a Bolt query succeeds."""
        self.root = os.path.abspath(self.root)
        os.makedirs(self.root, exist_ok=True)
        cmd = [sys.executable, "-m", "pipelines.graph.server", "--root", self.root,
               "--bolt-port", str(self.bolt_port), "--http-port", str(self.http_port), "--heap", self.heap]
        env = dict(os.environ, AURA_GRAPH_PASSWORD=self.password,
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        # cwd = root: the engine writes its own log/ folder into the working directory
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.root, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"graph server exited ({self.process.returncode}); see {self.log_path}")
            if ready(self.uri, self.auth):
                return self
            time.sleep(0.25)
        self.kill()
        raise TimeoutError(f"graph server not ready after {timeout_s} s; see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to the server's PID, then wait (SIGKILL after ``timeout_s``)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of the failure path)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedGraphServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ready(uri: str, auth: tuple[str, str], database: str = DATABASE) -> bool:
    """True when the server answers a Bolt query."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import Neo4jError, ServiceUnavailable

    try:
        with GraphDatabase.driver(uri, auth=auth, connection_timeout=2.0,
                                  connection_acquisition_timeout=2.0) as driver, \
                driver.session(database=database) as session:  # auto-commit: no driver retries
            return session.run("RETURN 1 AS one").single()["one"] == 1
    except (ServiceUnavailable, Neo4jError, OSError):
        return False
    except Exception:  # noqa: BLE001 - anything else during start-up means "not yet"
        return False


def serve(root: str, bolt_port: int, http_port: int, password: str, heap: str) -> int:
    """Run the ArcadeDB server with the Bolt plugin until SIGTERM/SIGINT."""
    import arcadedb_embedded

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = arcadedb_embedded.ArcadeDBServer(
        root, root_password=password,
        config={"host": "127.0.0.1", "http_port": http_port,
                "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
                "bolt_port": bolt_port, "server_defaultDatabases": f"{DATABASE}[{USER}]"},
        jvm_kwargs={"heap_size": heap})
    server.start()
    print(f"arcadedb bolt server pid {os.getpid()} on 127.0.0.1:{bolt_port}", flush=True)
    while not stop.is_set():
        stop.wait(0.5)
    server.stop()
    print("arcadedb bolt server stopped", flush=True)
    _end_jvm(0)
    return 0


def _end_jvm(code: int) -> None:
    """End the process now that the engine is down. Each connected Bolt client holds a
    non-daemon JVM thread, and the JVM would wait for every client to hang up before the
    process could exit (measured: a sink with an open connection kept a SIGTERMed server
    alive until ``stop``'s 30 s SIGKILL). ``System.exit`` runs the JVM's shutdown hooks and
    does not wait for those threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import jpype

        if jpype.isJVMStarted():
            jpype.java.lang.System.exit(code)
    except Exception:  # noqa: BLE001 - fall through to the hard exit
        pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="embedded ArcadeDB Bolt server (until SIGTERM)")
    p.add_argument("--root", required=True)
    p.add_argument("--bolt-port", type=int, default=7687)
    p.add_argument("--http-port", type=int, default=2480)
    p.add_argument("--heap", default="1g")
    a = p.parse_args(argv)
    password = os.environ.get("AURA_GRAPH_PASSWORD", DEFAULT_PASSWORD)
    return serve(a.root, a.bolt_port, a.http_port, password, a.heap)


if __name__ == "__main__":
    sys.exit(main())
