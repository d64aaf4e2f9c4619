"""Child processes of the service, started and stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Child:
    """A child process with its log file."""

    name: str
    process: subprocess.Popen
    log_path: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            if self.wait(timeout_s) is None:
                self.process.kill()
        return self.process.wait()

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-n:])
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when its parent dies (Linux ``PR_SET_PDEATHSIG``),
    so a service killed outright leaves no worker behind to race its successor."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def spawn(name: str, args: list[str], log_dir: str, env: dict[str, str] | None = None,
          drop_env_prefix: str | None = None) -> Child:
    """Start ``python -m ...`` args as a child with stdout and stderr in ``log_dir/name.log``;
    its environment is ours plus ``env``, without variables starting with ``drop_env_prefix``.
    The child dies with this process."""
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.log")
    child_env = {k: v for k, v in os.environ.items()
                 if drop_env_prefix is None or not k.startswith(drop_env_prefix)}
    child_env.update(env or {})
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed below once inherited
    try:
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    finally:
        log.close()
    return Child(name, proc, log_path)


def terminate(proc: subprocess.Popen | None, grace_s: float) -> None:
    """SIGTERM to ``proc``'s PID, SIGKILL if it does not exit within ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(grace_s)


def wait_until(check, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()


def kill_stale(pids: dict[str, int], marker: str = "pipelines.") -> list[str]:
    """SIGKILL the processes a killed predecessor left (``name -> pid``), if they still run
    our code (their command line names ``marker``: a recycled PID is left alone)."""
    killed = []
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{name} (pid {pid})")
            except ProcessLookupError:
                pass
    return killed
