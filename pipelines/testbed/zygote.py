"""The fleet's process factory: one process that imports the agent code once (LangGraph,
OpenTelemetry, uvicorn: ~2 s of CPU per cold interpreter) and forks every replica from
there, so a fleet of eight starts in about a second instead of ~20 s of CPU.

Each replica is a real, separate OS process with its own PID, sockets, event loop and
exporter, exactly what ``python -m pipelines.testbed.agent`` would run. The zygote talks
to the fleet over stdin/stdout, one JSON object per line:

- ``{"op": "bind", "key": K, "port": P}`` -> ``{"ok": true, "port": ...}``: a listening
  socket on 127.0.0.1 (port 0 = a free one), held until the spawn that uses it;
- ``{"op": "spawn", "key": K, "spec": ProcessSpec, "log": PATH}`` -> ``{"ok": true, "pid": ...}``:
  fork a replica serving on socket K (the zygote closes its own copy, so a dead replica
  refuses connections);
- ``{"op": "status"}`` -> ``{"ok": true, "exited": {pid: exit code}}`` (children are reaped
  as they exit);
- ``{"op": "exit"}``.

The first line the zygote writes is ``{"ready": true, "pid": ...}``. Replicas get SIGTERM
if the zygote dies, and the zygote if the thread that started it does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import traceback

# everything a replica needs, imported once here, before any fork
import anyio  # noqa: F401 - httpx's async backend, otherwise imported on a replica's first call
import httpcore._backends.anyio  # noqa: F401
import uvicorn.lifespan.on  # noqa: F401
import uvicorn.loops.asyncio  # noqa: F401
import uvicorn.protocols.http.h11_impl  # noqa: F401

from pipelines.testbed import agent
from pipelines.testbed.proc import die_with_parent
from pipelines.testbed.spec import ProcessSpec

_exited: dict[int, int] = {}


def _reap(*_) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _exited[pid] = os.waitstatus_to_exitcode(status)


def _listen(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    return s


def _child(spec: dict, sock: socket.socket, log: str, held: dict[str, socket.socket]) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        die_with_parent()
        for s in held.values():
            if s is not sock:
                s.close()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        agent.serve(ProcessSpec.from_dict({**spec, "fd": sock.fileno()}))
        code = 0
    except BaseException:  # noqa: BLE001 - whatever it was goes to the replica's log
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    die_with_parent()
    signal.signal(signal.SIGCHLD, _reap)
    held: dict[str, socket.socket] = {}
    _reply({"ready": True, "pid": os.getpid(), "threads": threading.active_count()})
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "bind":
                if cmd["key"] in held:
                    held.pop(cmd["key"]).close()
                held[cmd["key"]] = s = _listen(int(cmd.get("port", 0)))
                _reply({"ok": True, "port": s.getsockname()[1]})
            elif op == "spawn":
                sock = held.pop(cmd["key"])
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:
                    _child(cmd["spec"], sock, cmd["log"], held)
                sock.close()
                _reply({"ok": True, "pid": pid})
            elif op == "status":
                _reap()
                _reply({"ok": True, "exited": {str(p): c for p, c in _exited.items()}})
            elif op == "exit":
                _reply({"ok": True})
                break
            else:
                _reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as err:  # noqa: BLE001 - answered, the zygote stays up
            _reply({"ok": False, "error": f"{type(err).__name__}: {err}"})
    for s in held.values():
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
