"""Latency from a prediction file landing in the run's output to the alert being visible in a
real Alertmanager (``GET /api/v2/alerts``) and to Alertmanager's webhook notification.

A real Alertmanager (Debian 0.25, child process, group_wait 0s) and a webhook receiver on
free ports; the alert service polls the output directory every ``--poll`` seconds in its
thread. Each of ``--alerts`` rounds writes one high-risk window (snapshot, feature row, then
the prediction file, atomically, as the streaming job does) for a fresh tenant, so each opens
one alert; the clock starts at the prediction file's mtime. Rounds are ``--gap`` seconds
apart (with jitter, so that file arrival is not in phase with the poll).

    python bench/bench_alert_latency.py [--alerts 50] [--poll 0.1] [--gap 0.25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.alerts.alertmanager import AlertmanagerSink  # noqa: E402
from pipelines.alerts.alertmanager_server import AlertmanagerProcess  # noqa: E402
from pipelines.alerts.service import AlertService  # noqa: E402
from tests.alerts_fixture import HEALTHY, WebhookReceiver, write_window  # noqa: E402


def visible(client: httpx.Client, url: str, tenant: str) -> bool:
    r = client.get(f"{url}/api/v2/alerts", params={"filter": f'tenant="{tenant}"'})
    return r.status_code == 200 and bool(r.json())


def stats(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"n": len(xs), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1),
            "mean_ms": round(float(a.mean()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=50)
    ap.add_argument("--poll", type=float, default=0.1, help="alert service poll interval (s)")
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between rounds (plus jitter)")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    rng = random.Random(0)
    root = tempfile.mkdtemp(prefix="aura-bench-alerts-")
    out = os.path.join(root, "out")
    got_gui, got_hook, split_seen, split_deliver = [], [], [], []
    with WebhookReceiver() as hook, AlertmanagerProcess(os.path.join(root, "am"), webhook_url=hook.url,
                                                       group_wait="0s", group_interval="1s") as am, \
            httpx.Client(timeout=2.0) as client:
        svc = AlertService(out, sinks=[AlertmanagerSink(am.url)], poll_interval_s=a.poll).start()
        try:
            for k in range(a.alerts):
                tenant = f"bench-{k:03d}"
                path = write_window(out, 0, 0.95, tenant=tenant, features=HEALTHY, sick=("c",))
                t_file = os.path.getmtime(path)
                deadline = time.time() + 10
                while not visible(client, am.url, tenant):
                    if time.time() > deadline:
                        raise SystemExit(f"alert for {tenant} not visible after 10 s")
                    time.sleep(0.005)
                got_gui.append(time.time() - t_file)
                body = hook.wait_for(lambda b, t=tenant: any(x["labels"].get("tenant") == t
                                                             for x in b.get("alerts", [])), timeout_s=10)
                with hook.cond:
                    got_hook.append(hook.received_at[hook.bodies.index(body)] - t_file)
                time.sleep(a.gap * rng.uniform(0.5, 1.5))
        finally:
            svc.stop()
        for e in svc.latency_log():
            split_seen.append(e["seen_at"] - e["file_mtime"])
            split_deliver.append(e["delivered_at"] - e["seen_at"])
        counters = svc.counters()
    result = {"alerts": a.alerts, "poll_interval_s": a.poll,
              "file_to_alertmanager_visible": stats(got_gui),
              "file_to_webhook_notification": stats(got_hook),
              "file_to_service_seen": stats(split_seen),
              "seen_to_delivered": stats(split_deliver),
              "alerts_sent": counters["alerts_sent"], "alerts_failed": counters["alerts_failed"]}
    print(json.dumps(result, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
