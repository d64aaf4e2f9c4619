"""A running testbed fleet: one process per agent replica on 127.0.0.1, load, triggers,
and what the run recorded.

``Fleet(spec).start()`` starts the zygote (``pipelines.testbed.zygote``: the agent code
imported once), which binds a listening socket per replica on a free loopback port and
forks the replica onto it, so no port can be taken in between and a fleet starts in
seconds; it returns once every replica answers ``/healthz`` and a few warm-up requests
went through. ``run(duration, triggers, out_dir)`` drives the load generator against the
entry agents, applies the triggers on schedule, and writes ``labels.json``,
``wiring.json``, ``client.ndjson``, ``fleet.json`` and ``summary.json``; runs can follow
one another on the same processes (runtime controls are reset at the start of each, a
killed replica stays down until ``restart``). ``stop()`` sends SIGTERM to every replica
(each flushes its spans and writes its final counters), SIGKILLs what is still alive
after the grace period, and waits until every PID is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from pipelines.testbed.load import LoadGenerator
from pipelines.testbed.onset import labels_document
from pipelines.testbed.proc import cpu_seconds, die_with_parent, pid_running
from pipelines.testbed.spec import FleetSpec, ProcessSpec, Trigger

_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the pipelines package
_NORMAL = {"slow_factor": 1.0, "ramp_s": 0.0, "error_prob": 0.0}


class FleetError(RuntimeError):
    """The fleet could not be started or driven."""


@dataclass
class Replica:
    agent: str
    index: int
    port: int
    spec_path: str
    stats_path: str
    log_path: str
    pid: int | None = None
    returncode: int | None = None
    killed: bool = False

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.pid is not None and self.returncode is None


class _Zygote:
    """The pre-imported parent of every replica (``pipelines.testbed.zygote``)."""

    def __init__(self, python: str, log_path: Path):
        path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [python, "-m", "pipelines.testbed.zygote"], cwd=str(_ROOT), env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1, start_new_session=True,
                preexec_fn=die_with_parent)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=5)
            tail = self.log_path.read_text()[-1500:] if self.log_path.exists() else ""
            raise FleetError(f"testbed zygote exited ({self.proc.returncode}): {tail}")
        return json.loads(line)

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            raise FleetError(f"zygote {cmd.get('op')}: {reply.get('error')}")
        return reply

    def close(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, FleetError, ValueError):
                self.call(op="exit")
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


class Fleet:
    """The processes of one ``FleetSpec``; usable as a context manager (start/stop)."""

    def __init__(self, spec: FleetSpec, workdir: str | None = None, python: str = sys.executable):
        spec.validate()
        self.spec, self.python = spec, python
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="aura-testbed-")
        self.workdir = Path(workdir or self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.replicas: dict[str, list[Replica]] = {}
        self.final_stats: dict[str, dict] = {}  # "agent/replica" -> last stats, after stop()
        self.started_pids: list[int] = []
        self.zygote: _Zygote | None = None
        self.startup_s: float | None = None

    # ---------------------------------------------------------------- processes
    def start(self, timeout_s: float = 90.0, warmup: bool = True) -> None:
        """Start every replica, wait until all answer ``/healthz``, then (``warmup``) send
        a few requests through the entry agents so that no run pays for first calls."""
        if self.zygote is not None:
            raise FleetError("fleet already started")
        t0 = time.monotonic()
        try:
            self.zygote = _Zygote(self.python, self.workdir / "zygote.log")
            self.started_pids.append(self.zygote.proc.pid)
            for a in self.spec.agents:
                self.replicas[a.name] = []
                for i in range(a.replicas):
                    key = f"{a.name}/{i}"
                    port = self.zygote.call(op="bind", key=key, port=0)["port"]
                    base = str(self.workdir / f"{a.name}.{i}")
                    self.replicas[a.name].append(
                        Replica(a.name, i, port, f"{base}.spec.json", f"{base}.stats.json", f"{base}.log"))
            for rs in self.replicas.values():
                for r in rs:
                    self._spawn(r)
            self._wait_healthy(timeout_s)
            if warmup:
                self._warmup()
        except BaseException:
            self.stop()
            raise
        self.startup_s = round(time.monotonic() - t0, 2)

    def _spawn(self, r: Replica) -> None:
        a = self.spec.agent(r.agent)
        ps = ProcessSpec(agent=a, replica=r.index, tenant=self.spec.tenant,
                         otlp_endpoint=self.spec.otlp_endpoint,
                         downstream={c: [x.url for x in self.replicas[c]] for c in a.calls}, port=r.port,
                         export_delay_ms=self.spec.export_delay_ms, seed=self.spec.seed,
                         stats_path=r.stats_path)
        spec = asdict(ps)
        Path(r.spec_path).write_text(json.dumps(spec))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(r.stats_path)
        r.pid = self.zygote.call(op="spawn", key=r.key, spec=spec, log=r.log_path)["pid"]
        r.returncode, r.killed = None, False
        self.started_pids.append(r.pid)

    def _refresh(self) -> None:
        """Exit codes of replicas that have exited (the zygote reaps them)."""
        if self.zygote is None:
            return
        if self.zygote.proc.poll() is None:
            exited = {int(p): c for p, c in self.zygote.call(op="status")["exited"].items()}
        else:  # the zygote is gone (its replicas got SIGTERM): look at /proc
            exited = {r.pid: -1 for rs in self.replicas.values() for r in rs
                      if r.pid is not None and not pid_running(r.pid)}
        for rs in self.replicas.values():
            for r in rs:
                if r.returncode is None and r.pid in exited:
                    r.returncode = exited[r.pid]

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [r for rs in self.replicas.values() for r in rs]
        with httpx.Client(timeout=1.0) as client:
            while pending:
                self._refresh()
                for r in list(pending):
                    if not r.alive:
                        raise FleetError(f"{r.key} exited with {r.returncode} during start-up: "
                                         f"{self._log_tail(r)}")
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{r.url}/healthz").status_code == 200:
                            pending.remove(r)
                if pending and time.monotonic() > deadline:
                    raise FleetError(f"not healthy after {timeout_s:g} s: {[r.key for r in pending]}")
                if pending:
                    time.sleep(0.1)

    def _warmup(self, concurrency: int = 4) -> None:
        """A request per process through the entries, a few at a time: first calls pay
        for lazily built state (connections, caches) outside any run."""
        urls = [r.url for e in self.spec.entries for r in self.replicas[e]]
        n = max(len(urls), sum(len(rs) for rs in self.replicas.values()))

        async def go() -> None:
            async with httpx.AsyncClient(timeout=10.0) as client:
                async def one(i: int) -> None:
                    with contextlib.suppress(httpx.HTTPError):
                        await client.post(f"{urls[i % len(urls)]}/invoke", json={})
                for k in range(0, n, concurrency):
                    await asyncio.gather(*(one(i) for i in range(k, min(n, k + concurrency))))

        asyncio.run(go())

    @staticmethod
    def _log_tail(r: Replica, n: int = 1500) -> str:
        try:
            return Path(r.log_path).read_text()[-n:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """Every process this fleet started: the zygote and each replica (restarts too)."""
        return list(self.started_pids)

    def _wait_exit(self, rs: list[Replica], timeout_s: float) -> list[Replica]:
        """Wait until ``rs`` have exited; those still alive after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._refresh()
            left = [r for r in rs if r.alive]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def kill(self, agent: str, count: int = 1) -> list[int]:
        """SIGKILL ``count`` live replicas of ``agent``; their PIDs."""
        self._refresh()
        victims = [r for r in self.replicas[agent] if r.alive][:count]
        for r in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)
            r.killed = True
        self._wait_exit(victims, 5.0)
        return [r.pid for r in victims]

    def restart(self, agent: str) -> list[int]:
        """Start again the replicas of ``agent`` that are down, on their own ports."""
        self._refresh()
        out = []
        for r in self.replicas[agent]:
            if not r.alive:
                self.zygote.call(op="bind", key=r.key, port=r.port)
                self._spawn(r)
                out.append(r.pid)
        return out

    def stop(self, timeout_s: float = 15.0) -> dict[str, dict]:
        """SIGTERM every replica (spans are flushed), SIGKILL any still alive after
        ``timeout_s``, let the zygote reap them and exit; the final stats each replica
        wrote, by ``agent/replica``."""
        if self.zygote is None:
            return self.final_stats
        self._refresh()
        live = [r for rs in self.replicas.values() for r in rs if r.alive]
        for r in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGTERM)
        for r in self._wait_exit(live, timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)
        self._wait_exit(live, 5.0)
        self.zygote.close()
        for rs in self.replicas.values():
            for r in rs:
                with contextlib.suppress(OSError, ValueError):
                    self.final_stats[r.key] = json.loads(Path(r.stats_path).read_text())
        self.zygote = None
        return self.final_stats

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- observing
    def stats(self) -> dict[str, dict]:
        """Live ``/stats`` of every replica that answers, by ``agent/replica``."""
        out = {}
        self._refresh()
        with httpx.Client(timeout=2.0) as client:
            for rs in self.replicas.values():
                for r in rs:
                    if r.alive:
                        with contextlib.suppress(httpx.HTTPError, ValueError):
                            out[f"{r.agent}/{r.index}"] = client.get(f"{r.url}/stats").json()
        return out

    def agent_totals(self, per_replica: dict[str, dict] | None = None) -> dict[str, dict]:
        """Counters summed over each agent's replicas (final stats when stopped)."""
        per_replica = per_replica if per_replica is not None else (self.final_stats or self.stats())
        out: dict[str, dict] = {}
        for key, st in per_replica.items():
            tot = out.setdefault(key.split("/")[0], {"replicas_reporting": 0})
            tot["replicas_reporting"] += 1
            for k, v in st.items():
                if isinstance(v, int | float) and k not in ("replica", "pid", "slow_factor", "error_prob"):
                    tot[k] = round(tot.get(k, 0) + v, 3)
        return out

    def wiring(self) -> dict:
        """The agents (replica ports), the entry agents and the caller -> callee edges."""
        return {
            "tenant": self.spec.tenant, "topology": self.spec.topology, "entries": list(self.spec.entries),
            "agents": [{"name": a.name, "calls": list(a.calls),
                        "replicas": len(self.replicas.get(a.name, [])),
                        "ports": [r.port for r in self.replicas.get(a.name, [])]} for a in self.spec.agents],
            "edges": [list(e) for e in self.spec.edges()],
        }

    def _cpu(self) -> dict[int, float]:
        self._refresh()
        return {r.pid: c for rs in self.replicas.values() for r in rs
                if r.alive and (c := cpu_seconds(r.pid)) is not None}

    # ---------------------------------------------------------------- running
    def run(self, duration_s: float, triggers: Sequence[Trigger] = (), out_dir: str | None = None) -> dict:
        """Load the fleet for ``duration_s`` seconds, applying ``triggers``; the summary
        (also written, with the labels and the rest, to ``out_dir``)."""
        if self.zygote is None:
            raise FleetError("start the fleet first")
        if duration_s <= 0:
            raise FleetError("duration must be positive")
        triggers = list(triggers)
        for t in triggers:
            t.validate(self.spec, duration_s)
        self._reset_controls()
        spans0 = sum(st.get("spans_ended", 0) for st in self.stats().values())
        cpu0, own0, wall0 = self._cpu(), time.process_time(), time.monotonic()
        seconds, applied = asyncio.run(self._drive(duration_s, triggers))
        cpu1, own1, wall = self._cpu(), time.process_time(), time.monotonic() - wall0
        start = seconds[0].ts
        records = [s.record() for s in seconds]
        fractions = [s.fail_fraction for s in seconds]
        labels = labels_document(  # the recording runs on through the drain of the last answers
            fractions, triggers, tenant=self.spec.tenant, start=start, duration_s=float(len(seconds)),
            threshold=self.spec.onset_threshold, sustain=self.spec.onset_sustain_s,
            extra={"source": "aura testbed", "graph": self.spec.topology, "n_agents": len(self.spec.agents),
                   "seed": self.spec.seed, "rate": self.spec.rate})
        totals = {k: sum(r[k] for r in records)
                  for k in ("sent", "ok", "failed", "timed_out", "shed", "degraded")}
        agents_cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
        live = self.stats()
        spans = sum(st.get("spans_ended", 0) for st in live.values()) - spans0  # killed replicas: lower bound
        summary = {
            "tenant": self.spec.tenant, "topology": self.spec.topology, "agents": len(self.spec.agents),
            "processes": sum(len(rs) for rs in self.replicas.values()), "duration_s": duration_s,
            "recorded_s": len(seconds),
            "rate": self.spec.rate, "start": labels["start"], "end": labels["end"], "requests": totals,
            "entry_fail_frac": round((totals["failed"] + totals["timed_out"] + totals["shed"])
                                     / max(1, totals["sent"]), 4),
            "cascades": [{k: c[k] for k in ("trigger_time", "onset", "end", "mechanism")}
                         for c in labels["cascades"]],
            "fizzles": [{k: f[k] for k in ("trigger_time", "mechanism", "during_break")}
                        for f in labels["fizzles"]],
            "breaks_without_trigger": labels["breaks_without_trigger"],
            "triggers_applied": applied,
            "cpu": {"agents_s": round(agents_cpu, 2), "driver_s": round(own1 - own0, 2),
                    "cores": round((agents_cpu + own1 - own0) / wall, 3), "wall_s": round(wall, 2)},
            "spans": {"ended_during_run": spans, "per_s": round(spans / wall, 1)},
            "agents_live": self.agent_totals(live),
        }
        if out_dir:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            _write_json(out / "labels.json", {"schema": "aura.labels/v1", "scenarios": [labels]})
            _write_json(out / "wiring.json", self.wiring())
            _write_json(out / "fleet.json", {**self.spec.to_dict(), "duration_s": duration_s,
                                              "triggers": [t.to_dict() for t in triggers]})
            tmp = out / "client.ndjson.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, out / "client.ndjson")
            _write_json(out / "summary.json", summary)
        summary["labels"] = labels
        summary["seconds"] = records
        return summary

    def _reset_controls(self) -> None:
        self._refresh()
        with httpx.Client(timeout=2.0) as client:
            for rs in self.replicas.values():
                for r in rs:
                    if r.alive:
                        with contextlib.suppress(httpx.HTTPError):
                            client.post(f"{r.url}/control", json=_NORMAL)

    async def _drive(self, duration_s: float, triggers: list[Trigger]):
        spec = self.spec
        gen = LoadGenerator({e: [r.url for r in self.replicas[e]] for e in spec.entries}, spec.rate,
                            spec.entry_timeout_s, spec.max_outstanding, spec.seed)
        applied: list[dict] = []
        t0, epoch0 = time.monotonic() + 0.05, time.time() + 0.05
        async with httpx.AsyncClient(timeout=2.0) as control:
            async def at(offset: float, what: str, trig: Trigger, undo: bool) -> None:
                await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
                detail = await self._apply(trig, undo, gen, control)
                applied.append({"what": what, "kind": trig.kind, "agent": trig.agent, "at_s": offset,
                                "ts": round(time.time(), 3), **detail})

            jobs = []
            for trig in triggers:
                jobs.append(asyncio.create_task(at(trig.at_s, "apply", trig, False)))
                if trig.for_s is not None and trig.at_s + trig.for_s < duration_s:
                    jobs.append(asyncio.create_task(at(trig.at_s + trig.for_s, "undo", trig, True)))
            try:
                seconds = await gen.run(duration_s, t0, epoch0)
            finally:
                for j in jobs:
                    j.cancel()
                await asyncio.gather(*jobs, return_exceptions=True)
        return seconds, sorted(applied, key=lambda x: x["at_s"])

    async def _apply(self, trig: Trigger, undo: bool, gen: LoadGenerator, control: httpx.AsyncClient) -> dict:
        if trig.kind == "surge":
            gen.surge.retarget(1.0 if undo else trig.factor, 0.0 if undo else trig.ramp_s, time.monotonic())
            return {"rate": spec_rate(self.spec, gen)}
        if trig.kind == "kill":  # blocks the loop for a few ms (a signal, a fork, a reap)
            if undo:
                return {"restarted_pids": self.restart(trig.agent)}
            if trig.ramp_s <= 0 or trig.count == 1:
                return {"killed_pids": self.kill(trig.agent, trig.count)}
            killed = []  # one replica at a time, spread over the ramp
            for k in range(trig.count):
                if k:
                    await asyncio.sleep(trig.ramp_s / (trig.count - 1))
                killed += self.kill(trig.agent, 1)
            return {"killed_pids": killed}
        ramp = 0.0 if undo else trig.ramp_s
        body = ({"slow_factor": 1.0 if undo else trig.factor, "ramp_s": ramp}
                if trig.kind == "slow" else {"error_prob": 0.0 if undo else trig.p, "ramp_s": ramp})
        answered = 0
        self._refresh()
        for r in self.replicas[trig.agent]:
            if r.alive:
                with contextlib.suppress(httpx.HTTPError):
                    answered += (await control.post(f"{r.url}/control", json=body)).status_code == 200
        return {"control": body, "replicas_answered": answered}


def spec_rate(spec: FleetSpec, gen: LoadGenerator) -> float:
    return round(spec.rate * gen.surge.target, 3)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
