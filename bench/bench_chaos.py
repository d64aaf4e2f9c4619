"""Chaos: the whole service under load, its components killed one at a time; nothing lost.

Real processes only: Alertmanager (its webhook to a receiver here), a receiver for the
incident workflow's interventions (``--actuator webhook:``, Idempotency-Key counted), ``aura
api`` (spool worker, Beam streaming job with consensus, embedded Bolt graph server, alert
service and incident workflow) and the testbed's fleet of traced processes exporting
OTLP/HTTP to it, with a slowed dependency so that alerts and interventions happen.

The job predicts through a real Triton server (``--predictor triton``); its four consensus
validators are processes of their own (``--validator-processes``), three running the model
with ONNX Runtime and one on that Triton server.

While the fleet runs, at seeded random moments, one at a time, with SIGKILL: the service
itself in the middle of a workflow step (a failpoint armed at start: it dies right after its
first intervention is delivered, before the step is checkpointed), the streaming job, the
spool worker, the graph server, Alertmanager, the Triton server, one consensus validator,
and the service again at a random moment. The
service starts its own children again (the job, which stops while Triton is away, with
back-off); the harness starts the service, Alertmanager and Triton again (as systemd or
Kubernetes would). Then the fleet stops, the service drains, the graph
spill is delivered, and every count is reconciled.

    python bench/bench_chaos.py [--load 150] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.alerts.alertmanager_server import AlertmanagerProcess  # noqa: E402
from pipelines.consensus.audit import audit_logs, committed_before, verify_log  # noqa: E402
from pipelines.predictions import read_predictions  # noqa: E402
from pipelines.service.launch import ApiProcess  # noqa: E402
from pipelines.service.processes import wait_until  # noqa: E402
from pipelines.service.runtime import CHILDREN  # noqa: E402
from pipelines.testbed.fleet import Fleet  # noqa: E402
from pipelines.testbed.spec import FleetSpec, Trigger  # noqa: E402
from pipelines.triton_server import TritonServer  # noqa: E402
from tests.alerts_fixture import WebhookReceiver  # noqa: E402

TENANT = "chaos"
MODEL_V1 = str(ROOT / "models" / "cascade_cfc_v1")  # reaches the high band on the testbed (see e2e test)
KILLS = ("job", "spool-worker", "graph", "alertmanager", "api", "triton", "validator")


class Chaos:
    """The processes of one chaos run and what was done to them."""

    def __init__(self, root: str, seed: int, engine: str = "beam"):
        self.root, self.rng, self.engine = root, random.Random(seed), engine
        # the job predicts through a real Triton server (its validators: ONNX in process, one on Triton)
        self.triton = TritonServer(os.path.join(root, "triton"), model_dir=MODEL_V1).start()
        self.log: list[dict] = []
        self.t0 = time.monotonic()
        self.hooks = WebhookReceiver().__enter__()  # interventions
        self.alert_hook = WebhookReceiver().__enter__()  # Alertmanager notifications
        self.am = AlertmanagerProcess(os.path.join(root, "am"), webhook_url=self.alert_hook.url).start()
        self.data = os.path.join(root, "svc")
        self.api: ApiProcess | None = None
        self.port: int | None = None

    def note(self, what: str, **kw) -> None:
        self.log.append({"t_s": round(time.monotonic() - self.t0, 1), "event": what, **kw})
        print(f"[{self.log[-1]['t_s']:7.1f} s] {what} {kw if kw else ''}", flush=True)

    def start_api(self, failpoints: str | None = None) -> None:
        env = {"AURA_API_GRACE_S": "4", "AURA_API_ALERT_RESEND_S": "5", "AURA_RUN_RISK_BANDS": "0.2,0.4",
               "AURA_RUN_MODEL_DIR": MODEL_V1, "AURA_RUN_PREDICTOR": "triton",
               "AURA_RUN_TRITON_URL": f"127.0.0.1:{self.triton.grpc_port}",
               "AURA_RUN_VALIDATOR_BACKENDS": "onnx,onnx,onnx,triton", "AURA_RUN_ENGINE": self.engine}
        if self.engine == "flink":  # checkpoints every 2 s; a job started again restores the newest
            env["AURA_RUN_CHECKPOINT_INTERVAL_S"] = "2"
        if failpoints:
            env["AURA_FAILPOINTS"] = failpoints
        args = ("--default-tenant", TENANT, "--alertmanager-url", self.am.url,
                "--actuator", f"webhook:{self.hooks.url}", "--approve-above", "1.0", "--validator-processes")
        t = time.monotonic()
        self.api = ApiProcess(self.data, args, env, port=self.port).start()
        self.port = self.api.port
        self.note("service ready", pid=self.api.proc.pid, took_s=round(time.monotonic() - t, 1),
                  failpoints=failpoints)

    def children(self) -> dict[str, int]:
        try:
            with open(os.path.join(self.data, CHILDREN)) as fh:
                return json.load(fh)
        except (FileNotFoundError, ValueError):
            return {}

    def kill(self, what: str) -> None:
        if what == "api":
            self.ensure_api()
            self.note("kill", target="api", pid=self.api.proc.pid)
            self.api.proc.kill()
            self.api.proc.wait()
            self.start_api()
        elif what == "triton":
            self.note("kill", target="triton", pid=self.triton.process.pid)
            self.triton.kill()
            time.sleep(5)  # predictions fail meanwhile: the job stops and the service starts it again
            t = self.triton
            self.triton = TritonServer(t.workdir, model_dir=MODEL_V1, http_port=t.http_port,
                                       grpc_port=t.grpc_port).start()
            self.note("triton ready", pid=self.triton.process.pid)
        elif what == "alertmanager":
            self.note("kill", target="alertmanager", pid=self.am.proc.pid)
            self.am.proc.kill()
            self.am.proc.wait()
            time.sleep(5)  # alerts meanwhile fail and spill
            self.am.start()
            self.note("alertmanager ready", pid=self.am.proc.pid)
        else:
            self.ensure_api()
            target = what
            if what == "validator":  # one of the n, at random
                what = self.rng.choice(sorted(k for k in self.children() if k.startswith("validator-")))
            pid = self.children().get(what)
            self.note("kill", target=target, process=what, pid=pid)
            os.kill(pid, signal.SIGKILL)
            back = lambda: self.children().get(what) not in (None, pid) or self.api.proc.poll() is not None  # noqa: E731
            if not wait_until(back, 120):
                raise RuntimeError(f"the service did not start {what} again")
            if self.ensure_api():  # the service itself died meanwhile: the new one started it
                return
            self.note("started again by the service", target=target, pid=self.children()[what])

    def ensure_api(self) -> bool:
        """Start the service again if the workflow failpoint killed it; whether it had."""
        if self.api.proc.poll() is None:
            return False
        self.note("service died at the workflow failpoint (mid-step)", rc=self.api.proc.returncode)
        self.start_api()
        return True

    def killer(self, load_s: float, stop: threading.Event) -> None:
        """The kills, one at a time, each at a random moment of its slot of the load."""
        slot = (load_s - 20) / len(KILLS)
        order = list(KILLS)
        self.rng.shuffle(order)
        for i, what in enumerate(order):
            at = 10 + i * slot + self.rng.uniform(0, slot * 0.6)
            while time.monotonic() - self.t_load < at:
                if stop.wait(0.2):
                    return
            self.ensure_api()  # the workflow failpoint may have fired meanwhile
            self.kill(what)

    def close(self) -> None:
        for x in (self.api,):
            if x is not None:
                x.stop(600)
        self.am.stop()
        self.triton.stop()
        self.hooks.__exit__(None, None, None)
        self.alert_hook.__exit__(None, None, None)


def reconcile(c: Chaos, final: dict, api_rc: int) -> dict:
    """Every count, from the outputs of every run into the data directory."""
    from neo4j import GraphDatabase

    from pipelines.alerts.incidents import list_incidents
    from pipelines.graph.sink import pending_batches
    from pipelines.graph.target import GraphSettings, open_graph, spill_path

    run = os.path.join(c.data, "run")
    with open(os.path.join(c.data, "ingest", "ledger.json")) as fh:
        spool = json.load(fh)
    with open(os.path.join(run, "summary.json")) as fh:
        job = json.load(fh)
    acked = sum(st.get("spans_exported", 0) for st in final.values())
    preds = read_predictions(run).to_pylist()
    logs = audit_logs(run)
    vids = [v.vid for p in logs for v, _ in committed_before(p).values()]
    spilled = pending_batches(spill_path(run))
    with (open_graph(GraphSettings(), run, log=lambda m: None) as spec,  # delivers the spill first
          GraphDatabase.driver(spec.uri, auth=(spec.user, spec.password)) as driver):
        nodes = driver.execute_query("MATCH (p:Prediction {tenant: $t}) RETURN count(p) AS n",
                                     t=TENANT, database_=spec.database).records[0]["n"]
    incidents = list_incidents(run, TENANT)
    alerted = {a["labels"].get("incident") for m in c.alert_hook.bodies for a in m["alerts"]}
    keys = Counter(k for k in c.hooks.keys if k)
    from pipelines.incidents.store import incidents as stored_incidents
    from pipelines.incidents.store import open_saver, values

    saver = open_saver(os.path.join(run, "incidents.sqlite"))
    acted = {a["id"] for i in stored_incidents(saver) for a in values(saver, i["id"]).get("actions", [])
             if a.get("status") not in ("failed", "rejected")}
    led = job.get("ledger", {})
    certified = sum(bool(r["certificate"]) for r in preds)
    alerted_ids = {i["id"] for i in incidents} & alerted
    return {
        "kills": [e for e in c.log if e["event"].startswith(("kill", "service died"))],
        "spans": {"acknowledged": acked, "received": spool["spans_received"],
                  "in_records": spool["spans_in_records"], "dead_lettered": spool["spans_dead_total"],
                  "pending": spool["spans_pending"],
                  "lost": max(0, acked - spool["spans_received"])},
        "records": {"landed": spool["records_landed"], "read": job["read"], "windowed": job["windowed"],
                    "dead_lettered": job["dead_lettered"], "reconciles": job["reconciles"],
                    "runs": led.get("runs"),
                    "files_read_again": led.get("file_reads", 0) - led.get("files", 0),
                    "windows_final": led.get("windows_final"), "windows_short": led.get("windows_short")},
        "verdicts": {"predictions": len(preds), "with_certificate": certified,
                     "committed_in_audit": len(vids), "committed_twice": len(vids) - len(set(vids)),
                     "audit_chains_ok": all(verify_log(p).ok for p in logs),
                     "graph_predictions": nodes, "graph_batches_spilled_then_delivered": spilled},
        "alerts": {"incidents": len(incidents), "incidents_alerted": len(alerted_ids),
                   "notifications": len(c.alert_hook.bodies)},
        "interventions": {"acted": len(acted), "received": len(keys), "lost": len(acted - set(keys)),
                          "resent_same_key": sum(n - 1 for n in keys.values())},
        "service_exit_code": api_rc,
    }


def verdict(r: dict) -> list[str]:
    """What did not hold (empty: nothing lost or duplicated)."""
    bad = []
    s, rec, v = r["spans"], r["records"], r["verdicts"]
    if s["lost"] or s["pending"] or s["received"] != s["in_records"] + s["dead_lettered"]:
        bad.append(f"spans: {s}")
    if not rec["reconciles"] or rec["landed"] != rec["read"] or rec["windows_short"]:
        bad.append(f"records: {rec}")
    if (v["committed_twice"] or v["with_certificate"] != v["predictions"] or not v["audit_chains_ok"]
            or v["graph_predictions"] != v["predictions"]):
        bad.append(f"verdicts: {v}")
    if r["alerts"]["incidents_alerted"] != r["alerts"]["incidents"]:
        bad.append(f"alerts: {r['alerts']}")
    if r["interventions"]["lost"]:
        bad.append(f"interventions: {r['interventions']}")
    killed = {e.get("target") for e in r["kills"]}
    if any(e["event"].startswith("service died") for e in r["kills"]):
        killed.add("workflow")
    missed = (set(KILLS) | {"workflow"}) - killed
    if missed:
        bad.append(f"not killed: {sorted(missed)}")
    return bad


def run_chaos(root: str, load_s: float = 150.0, seed: int = 1, engine: str = "beam") -> dict:
    c = Chaos(root, seed, engine)
    stop = threading.Event()
    try:
        c.start_api(failpoints="workflow.acted=1")
        spec = FleetSpec.build(8, "layered", tenant=TENANT, seed=seed, otlp_endpoint=f"{c.api.url}/v1/traces")
        fleet = Fleet(spec, workdir=os.path.join(root, "fleet"))
        try:
            fleet.start()
            c.t_load = time.monotonic()
            killer = threading.Thread(target=c.killer, args=(load_s, stop), daemon=True)
            killer.start()
            slow = Trigger.parse("slow@30:agent=agent-7,factor=40,ramp=3")
            fleet.run(load_s, [slow], os.path.join(root, "tb"))
            stop.set()
            killer.join()
        finally:
            final = fleet.stop()
            fleet.close()
        c.ensure_api()
        c.note("load over; draining")
        rc = c.api.stop(600)
        c.api = None
        c.note("service stopped", rc=rc)
        report = reconcile(c, final, rc)
    finally:
        stop.set()
        c.close()
    report["failures"] = verdict(report)
    report["timeline"] = c.log
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", type=float, default=150.0, help="seconds of fleet load")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--root", help="working directory (default: a temporary one)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--engine", choices=("beam", "flink"), default="beam", help="the service's streaming job")
    a = p.parse_args(argv)
    root = a.root or tempfile.mkdtemp(prefix="aura-chaos-")
    t = time.monotonic()
    report = run_chaos(root, a.load, a.seed, a.engine)
    report["elapsed_s"] = round(time.monotonic() - t, 1)
    print(json.dumps({k: v for k, v in report.items() if k != "timeline"}, indent=1))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)
    print("chaos: " + ("nothing lost or duplicated" if not report["failures"]
                       else "FAILED: " + "; ".join(report["failures"])))
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
