"""The simulator-trained model on fleets of real processes it never saw: committed verdicts of
``aura api`` on testbed runs against the testbed's own onsets, and the service's latencies.

One real Alertmanager and one ``aura api`` (spool worker, streaming Beam job with consensus,
embedded Bolt graph server, alert service) serve every run; each run is a fresh testbed
fleet (real LangGraph agent processes exporting OTLP/HTTP) under its own tenant, either
with one trigger after ``--quiet-lead`` seconds of normal load, or quiet throughout.
Reported per run and pooled:

- warned: an alert (an incident opened by a committed high-band verdict) delivered to
  Alertmanager between the trigger and the onset; lead = onset - delivery time; an alert
  delivered after the onset is "late", with its delay;
- false alarms in quiet stretches: committed high-band verdicts (p >= 0.7) and alerts in
  windows that end before the trigger (and in quiet runs), per fleet-hour of such windows;
- window close -> committed verdict: the window closes when the landing file that moves the
  job's watermark past its end lands (the first file with a record at or after end +
  max out-of-orderness); the verdict is committed when its prediction file is written;
  and window close -> alert accepted by Alertmanager, for the windows that opened one.

    python bench/bench_testbed.py [--runs slow,fail,surge,quiet,quiet] [--duration 120] [--quiet-lead 60]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import orjson
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.alerts.alertmanager_server import AlertmanagerProcess  # noqa: E402
from pipelines.service.launch import ApiProcess  # noqa: E402
from pipelines.testbed.fleet import Fleet  # noqa: E402
from pipelines.testbed.spec import FleetSpec, Trigger  # noqa: E402

TRIGGERS = {"slow": "slow@{t}:agent=agent-7,factor=40,ramp=5",
            "fail": "fail@{t}:agent=agent-7,p=0.9",
            "surge": "surge@{t}:factor=3,ramp=5",
            "kill": "kill@{t}:agent=agent-7,count=1"}
HIGH = 0.7
LAG_S = 5.0  # the job's max out-of-orderness (default)


def landed_files(landing: str) -> list[tuple[float, float]]:
    """(landing time, largest record time) of every file the spool worker landed."""
    out = []
    for path in glob.glob(os.path.join(landing, "_processed", "spans-*.ndjson")):
        landed = int(os.path.basename(path).split("-")[1]) / 1e9
        with open(path, "rb") as fh:
            ts = max(float(orjson.loads(line)["ts"]) for line in fh if line.strip())
        out.append((landed, ts))
    return sorted(out)


def close_time(files: list[tuple[float, float]], window_end: float) -> float | None:
    for landed, ts in files:
        if ts >= window_end + LAG_S:
            return landed
    return None


def score_run(run_dir: str, tenant: str, labels: dict, files) -> dict:
    preds = sorted(glob.glob(os.path.join(run_dir, "predictions", f"tenant={tenant}", "*.parquet")))
    rows = []
    for p in preds:
        r = pq.read_table(p).to_pylist()[0]
        if r["certificate"]:
            rows.append({"start": r["window_start"].timestamp(), "end": r["window_end"].timestamp(),
                         "p": r["probability"], "committed_at": os.path.getmtime(p)})
    trig = labels["cascades"][0]["trigger_time"] if labels["cascades"] else (
        labels["fizzles"][0]["trigger_time"] if labels["fizzles"] else None)
    onset = labels["cascades"][0]["onset"] if labels["cascades"] else None
    quiet = [r for r in rows if trig is None or r["end"] <= trig]
    incidents = []
    for path in glob.glob(os.path.join(run_dir, "incidents", f"tenant={tenant}", "*.json")):
        with open(path) as fh:
            incidents.append(json.load(fh))
    alerts = []
    for inc in incidents:
        opened = [e for e in inc.get("events", []) if e["action"] == "open"]
        if opened:
            at = _epoch(opened[0]["at"])
            w_end = inc["opened_window"]["end"] / 1000
            alerts.append({"at": at, "window_end": w_end, "close": close_time(files, w_end)})
    quiet_alerts = [a for a in alerts if trig is None or a["window_end"] <= trig]
    after = [r for r in rows if trig is not None and onset is None and r["end"] > trig]  # a fizzle
    warned = [a for a in alerts if trig is not None and onset is not None and trig <= a["at"] <= onset]
    late = [a for a in alerts if onset is not None and a["at"] > onset]
    closes = [(close_time(files, r["end"]), r) for r in rows]
    verdict_lat = [r["committed_at"] - c for c, r in closes if c is not None]
    alert_lat = [a["at"] - a["close"] for a in alerts if a["close"] is not None]
    return {"tenant": tenant, "windows": len(rows), "onset": onset is not None,
            "trigger_to_onset_s": (onset - trig) if onset is not None else None,
            "quiet_windows": len(quiet), "quiet_high": sum(r["p"] >= HIGH for r in quiet),
            "quiet_alerts": len(quiet_alerts), "quiet_p_max": max((r["p"] for r in quiet), default=None),
            "fizzle_windows": len(after), "fizzle_high": sum(r["p"] >= HIGH for r in after),
            "fizzle_alerts": sum(1 for a in alerts if onset is None and trig is not None
                                 and a["window_end"] > trig),
            "warned": bool(warned), "lead_s": (onset - warned[0]["at"]) if warned else None,
            "late_s": (late[0]["at"] - onset) if late and not warned else None,
            "verdict_latency_s": verdict_lat, "alert_latency_s": alert_lat,
            "risk": [round(r["p"], 2) for r in rows]}


def describe(r: dict) -> str:
    onset = "no" if not r["onset"] else f"yes ({r['trigger_to_onset_s']:.0f} s after the trigger)"
    warned = f"yes, lead {r['lead_s']:.0f} s" if r["warned"] else "no"
    if r["late_s"] is not None:
        warned += f", alert {r['late_s']:.0f} s after the onset"
    fizzle = (f"; after the fizzled trigger {r['fizzle_windows']} windows with {r['fizzle_high']} high "
              f"verdicts, {r['fizzle_alerts']} alerts" if r["fizzle_windows"] else "")
    return (f"{r['tenant']}: windows {r['windows']}, onset {onset}, warned {warned}; quiet windows "
            f"{r['quiet_windows']} with {r['quiet_high']} high verdicts, {r['quiet_alerts']} alerts{fizzle}; "
            f"risk {r['risk']}")


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="slow,fail,surge,quiet,quiet")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load per run")
    p.add_argument("--quiet-lead", type=float, default=60.0, help="seconds before the trigger")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--keep", help="keep the data here instead of a temporary directory")
    p.add_argument("--rescore", help="score the runs kept in this directory again (no new runs)")
    a = p.parse_args()
    if a.rescore:
        return report(rescore(a.rescore), a.rescore, None)
    root = a.keep or tempfile.mkdtemp(prefix="aura-bench-testbed-")
    os.makedirs(root, exist_ok=True)
    results = []
    with AlertmanagerProcess(os.path.join(root, "am")) as am:
        api = ApiProcess(os.path.join(root, "svc"), ("--alertmanager-url", am.url),
                         {"AURA_API_GRACE_S": "2"}).start()
        try:
            for i, kind in enumerate(re.split(r"\s*,\s*", a.runs)):
                tenant = f"tb{i}-{kind}"
                spec = FleetSpec.build(8, "layered", tenant=tenant, seed=100 + i, rate=a.rate,
                                       otlp_endpoint=f"{api.url}/v1/traces")
                triggers = [] if kind == "quiet" else [Trigger.parse(TRIGGERS[kind].format(t=a.quiet_lead))]
                out = os.path.join(root, "runs", tenant)
                with Fleet(spec, workdir=os.path.join(out, "processes")) as fleet:
                    fleet.run(a.duration, triggers, out)
                with open(os.path.join(out, "labels.json")) as fh:
                    labels = json.load(fh)["scenarios"][0]
                time.sleep(12)  # the last windows close and commit
                files = landed_files(os.path.join(root, "svc", "landing"))
                run_dir = os.path.join(root, "svc", "run")
                results.append({"kind": kind, **score_run(run_dir, tenant, labels, files)})
                print(describe(results[-1]), flush=True)
        finally:
            code = api.stop()
    report(results, root, code)
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def rescore(root: str) -> list[dict]:
    files = landed_files(os.path.join(root, "svc", "landing"))
    results = []
    for run in sorted(os.listdir(os.path.join(root, "runs")), key=lambda n: int(n[2:].split("-")[0])):
        with open(os.path.join(root, "runs", run, "labels.json")) as fh:
            labels = json.load(fh)["scenarios"][0]
        results.append({"kind": run.split("-", 1)[1],
                        **score_run(os.path.join(root, "svc", "run"), run, labels, files)})
        print(describe(results[-1]))
    return results


def report(results: list[dict], root: str, code: int | None) -> int:
    onsets = [r for r in results if r["onset"]]
    quiet_windows = sum(r["quiet_windows"] for r in results)
    hours = quiet_windows * 10 / 3600
    vl = np.array([x for r in results for x in r["verdict_latency_s"]])
    al = np.array([x for r in results for x in r["alert_latency_s"]])
    print(f"\nmachine: {platform.node()} {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"service exit {code}")
    leads = [round(r["lead_s"], 1) for r in onsets if r["warned"]]
    lates = [round(r["late_s"], 1) for r in onsets if r["late_s"] is not None]
    print(f"onsets: {len(onsets)} of {sum(r['kind'] != 'quiet' for r in results)} triggered runs; "
          f"warned before the onset: {sum(r['warned'] for r in onsets)}; leads {leads} s; "
          f"late alerts {lates} s after the onset")
    q_high, q_alerts = sum(r["quiet_high"] for r in results), sum(r["quiet_alerts"] for r in results)
    print(f"quiet stretches: {quiet_windows} windows ({hours * 60:.1f} min): {q_high} high-band verdicts, "
          f"{q_alerts} alerts = {q_alerts / max(hours, 1e-9):.1f} false alarms per fleet-hour")
    if len(vl):
        print(f"window close -> committed verdict: p50 {np.percentile(vl, 50):.2f} s, p99 "
              f"{np.percentile(vl, 99):.2f} s, max {vl.max():.2f} s over {len(vl)} windows")
    if len(al):
        print(f"window close -> alert accepted by Alertmanager: p50 {np.percentile(al, 50):.2f} s, "
              f"max {al.max():.2f} s over {len(al)} alerts")
    f_windows = sum(r["fizzle_windows"] for r in results)
    if f_windows:
        f_alerts, f_high = sum(r["fizzle_alerts"] for r in results), sum(r["fizzle_high"] for r in results)
        print(f"after triggers that fizzled: {f_windows} windows, {f_high} high-band verdicts, {f_alerts} "
              f"alerts = {f_alerts / (f_windows * 10 / 3600):.1f} per fleet-hour")
    with open(os.path.join(root, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"results: {os.path.join(root, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
