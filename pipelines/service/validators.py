"""The consensus validators as child processes: one ``python -m pipelines.consensus.tcp
CONFIG RID`` each (``spawn``: they die with their parent), logs in ``log_dir/validator-<i>.log``.

The config file (``write_validator_config``) is what the streaming job reads too
(``aura run --validators-at CONFIG``). A validator started again while others run takes the
committed chain over from them (f+1 of them must send the same blocks) and votes again once
it holds the open requests (the job's client sends them when it reconnects). A set started
from nothing gets a new chain id first (``start``; ``restart_dead`` when every validator is
dead): a chain whose validators all lost their state cannot continue under the old id, and
the job's client, seeing the config change, starts a new audit log for the new chain.

Children get ``PR_SET_PDEATHSIG`` from ``spawn``: they die when the *thread* that started
them ends, so call ``start`` / ``restart_dead`` from a thread that lives as long as the
service (the main thread, or a supervisor thread that never returns)."""

from __future__ import annotations

import os
import socket
import time

from pipelines.consensus.tcp import load_config, save_config, write_config
from pipelines.service.processes import Child, spawn, wait_until


def write_validator_config(path: str, n: int = 4, predictor: str = "onnx", model_dir: str | None = None,
                           **kwargs) -> dict:
    """A validator set's config at ``path`` (fresh free ports and keys unless given; see
    ``pipelines.consensus.tcp.write_config`` for the settings)."""
    return write_config(path, n, predictor, model_dir=model_dir, **kwargs)


def new_chain(config_path: str) -> str:
    """Give the config a new chain id (same ports, keys and settings); the id."""
    cfg = load_config(config_path)
    cfg["chain_id"] = f"tcp-{time.time_ns()}"
    save_config(config_path, cfg)
    return cfg["chain_id"]


class ValidatorProcesses:
    """n validator processes of one config; start, restart the dead ones, stop."""

    def __init__(self, config_path: str, n: int | None = None, log_dir: str = "."):
        self.config_path, self.log_dir = os.path.abspath(config_path), log_dir
        cfg = load_config(self.config_path)
        self.n = len(cfg["ports"]) if n is None else n
        if self.n != len(cfg["ports"]):
            raise ValueError(f"{config_path} names {len(cfg['ports'])} validators, not {self.n}")
        self.children: dict[int, Child] = {}
        self.restarts: dict[int, int] = {}

    def _spawn(self, rid: int) -> Child:
        child = spawn(f"validator-{rid}", ["-m", "pipelines.consensus.tcp", self.config_path, str(rid)],
                      self.log_dir)
        self.children[rid] = child
        return child

    def start(self, new_chain_id: bool = True) -> ValidatorProcesses:
        """Start all n (a new chain id first unless ``new_chain_id=False``: a set started from
        nothing has no chain to continue)."""
        if new_chain_id:
            new_chain(self.config_path)
        for rid in range(self.n):
            self._spawn(rid)
        return self

    def alive(self) -> list[int]:
        return [r for r, c in sorted(self.children.items()) if c.alive()]

    def dead(self) -> list[int]:
        return [r for r in range(self.n) if r not in self.children or not self.children[r].alive()]

    def restart_dead(self) -> list[int]:
        """Start again every validator that exited (same port, key and chain: it catches up
        from the others); the rids started. When all n had died, the chain starts anew."""
        dead = self.dead()
        if not dead:
            return []
        if len(dead) == self.n:
            new_chain(self.config_path)
        for rid in dead:
            old = self.children.get(rid)
            if old is not None:
                old.process.wait()  # reaped
            self.restarts[rid] = self.restarts.get(rid, 0) + 1
            self._spawn(rid)
        return dead

    def pids(self) -> dict[str, int]:
        """``validator-<i>`` -> pid of the live ones."""
        return {f"validator-{r}": c.pid for r, c in sorted(self.children.items()) if c.alive()}

    def ports(self) -> list[int]:
        return list(load_config(self.config_path)["ports"])

    def wait_ready(self, timeout_s: float = 60.0, rids: list[int] | None = None) -> bool:
        """Until the validators (default: all) accept connections."""
        ports = self.ports()

        def up(r: int) -> bool:
            try:
                with socket.create_connection(("127.0.0.1", ports[r]), timeout=0.5):
                    return True
            except OSError:
                return False

        todo = list(range(self.n) if rids is None else rids)
        return wait_until(lambda: all(up(r) for r in todo), timeout_s)

    def kill(self, rid: int, sig: int | None = None) -> None:
        """SIGKILL (or ``sig``) one validator and reap it (tests, chaos)."""
        import signal

        c = self.children[rid]
        if c.alive():
            os.kill(c.pid, sig or signal.SIGKILL)
        c.process.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        for c in self.children.values():
            if c.alive():
                c.process.terminate()
        for c in self.children.values():
            c.stop(timeout_s)
