"""Reads of the streaming job's outputs for the service: committed verdicts and windows.

The job writes one Parquet file per (kind, tenant, window, pane) under its output directory
(``<kind>/tenant=<t>/window=<start ms>-pane=<i>.parquet``); a later pane of a window
replaces the earlier one for readers, so each window is read at its latest pane.
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from pipelines.alerts.outputs import PANE_FILE, TENANT_DIR
from pipelines.calibration import CALIBRATING, OK, OUT_OF_DISTRIBUTION

# feature columns a window listing shows (the whole vector stays in the features files)
WINDOW_FEATURES = ("unhealthy_frac", "error_rate_p90", "latency_p99_log_p50", "requests_log",
                   "stress_h0_betti_t0.5", "stress_h1_betti_t0.5", "stress_h0_total_persistence",
                   "stress_wasserstein_h0")


# what a verdict's status means, in plain words, for the reads (``ok`` needs none)
STATUS_NOTES = {
    CALIBRATING: "still calibrating: the tenant's baseline of its first windows is not complete, so this "
                 "risk is not trusted yet and raises no alert",
    OUT_OF_DISTRIBUTION: "out of distribution: this window's telemetry lies far outside what the model was "
                         "trained on, so this risk is not trusted and raises no alert",
}


def status_view(status: str) -> dict:
    """A verdict status as the tenant view shows it: ``calibration`` is ``calibrating`` while
    the tenant's baseline is incomplete (its verdicts are still ``calibrating``), else
    ``complete``; ``note`` says in words why a verdict that is not ``ok`` is not trusted."""
    note = STATUS_NOTES.get(status, None if status == OK else f"status {status}: this risk is not trusted")
    return {"status": status, "calibration": CALIBRATING if status == CALIBRATING else "complete",
            "note": note}


def latest_panes(out_dir: str, kind: str, tenant: str) -> dict[int, str]:
    """window start (ms) -> path of its latest pane."""
    d = os.path.join(out_dir, kind, f"{TENANT_DIR}{tenant}")
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return {}
    best: dict[int, tuple[int, str]] = {}
    for n in names:
        m = PANE_FILE.match(n)
        if m:
            start, pane = int(m[1]), int(m[2])
            if start not in best or pane > best[start][0]:
                best[start] = (pane, os.path.join(d, n))
    return {s: p for s, (_, p) in best.items()}


def tenants(out_dir: str) -> list[str]:
    d = os.path.join(out_dir, "snapshots")
    try:
        return sorted(n[len(TENANT_DIR):] for n in os.listdir(d) if n.startswith(TENANT_DIR))
    except FileNotFoundError:
        return []


def _row(path: str) -> dict:
    return pq.read_table(path).to_pylist()[0]


def _ms(t) -> int:
    return int(t.timestamp() * 1000)


def prediction(path: str) -> dict:
    """A prediction row with times in epoch ms and the certificate parsed."""
    r = _row(path)
    cert = r.get("certificate")
    return {"window_start_ms": _ms(r["window_start"]), "window_end_ms": _ms(r["window_end"]),
            "pane": r["pane_index"], "probability": r["probability"], "horizon_s": r["horizon_s"],
            "history_windows": r["history_windows"], "feature_version": r["feature_version"],
            "predictor": r["predictor"], "certificate": json.loads(cert) if cert else None,
            "status": r.get("status") or OK}  # files from before verdict statuses: ok


def latest_verdict(out_dir: str, tenant: str, committed_only: bool = True) -> dict | None:
    """The tenant's latest verdict (committed by consensus unless ``committed_only`` is off)."""
    panes = latest_panes(out_dir, "predictions", tenant)
    for start in sorted(panes, reverse=True):
        p = prediction(panes[start])
        if p["certificate"] is not None or not committed_only:
            return p
    return None


def windows(out_dir: str, tenant: str, start_ms: int | None, end_ms: int | None,
            limit: int) -> list[dict]:
    """The tenant's windows in [start_ms, end_ms), oldest first (at most ``limit``, the newest)."""
    snaps = latest_panes(out_dir, "snapshots", tenant)
    feats = latest_panes(out_dir, "features", tenant)
    preds = latest_panes(out_dir, "predictions", tenant)
    keys = sorted(s for s in snaps if (start_ms is None or s >= start_ms) and (end_ms is None or s < end_ms))
    out = []
    for s in keys[-limit:] if limit else []:
        cols = ["window_end", "pane_index", "n_records", "agents"]
        snap = pq.read_table(snaps[s], columns=cols).to_pylist()[0]
        row = {"window_start_ms": s, "window_end_ms": _ms(snap["window_end"]), "pane": snap["pane_index"],
               "records": snap["n_records"], "agents": len(snap["agents"]), "features": None,
               "probability": None, "committed": False, "status": None}
        if s in feats:
            f = pq.read_table(feats[s]).to_pylist()[0]
            row["features"] = {k: f.get(k) for k in WINDOW_FEATURES}
        if s in preds:
            p = prediction(preds[s])
            row["probability"], row["committed"] = p["probability"], p["certificate"] is not None
            row["status"] = p["status"]
        out.append(row)
    return out


def latest_agent(out_dir: str, tenant: str, agent: str) -> dict | None:
    """The agent's metrics and calls in the tenant's latest window that has it, from the snapshot."""
    snaps = latest_panes(out_dir, "snapshots", tenant)
    for start in sorted(snaps, reverse=True)[:30]:
        t = pq.read_table(snaps[start]).to_pylist()[0]
        if agent not in t["agents"]:
            continue
        i = t["agents"].index(agent)
        metrics = {k[len("agg_"):]: v[i] for k, v in t.items() if k.startswith("agg_")}
        names = t["agents"]
        callees = [{"agent": names[e["dst"]], "calls": e["count"], "errors": e["errors"],
                    "latency_ms": e["latency_ms"]} for e in t["edges"] if e["src"] == i]
        callers = [{"agent": names[e["src"]], "calls": e["count"], "errors": e["errors"],
                    "latency_ms": e["latency_ms"]} for e in t["edges"] if e["dst"] == i]
        return {"window_start_ms": start, "metrics": metrics, "callers": callers, "callees": callees}
    return None
