"""Small Linux process helpers for the testbed: parent-death signals and /proc reads."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when the parent (strictly: the thread that forked us) dies, so no
    testbed process outlives the one that started it. Best effort; Linux only."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process; None when it is gone."""
    f = _stat_fields(pid)
    return None if f is None else (int(f[11]) + int(f[12])) / _CLK_TCK


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"
