"""Plain data -> the parameter rows of the graph statements (no driver, no engine).

Keys: a tenant by its id; an agent by ``tenant/agent_id``; a window by ``tenant/start_ms``
(one Window node per (tenant, window), later panes update it); a prediction by the same
``tenant/start_ms`` as its window (one per window, the latest pane's values).

Implicated agents of a window (and so of its prediction): the agents most involved in the
stressed part of the call graph. A link is stressed when its stress (max of error share and
latency inflation, exactly as the stress filtration computes it) is at least 0.5, i.e. it
enters the filtration before 0.5 and belongs to the stressed components and cycles the
H0/H1 features describe. An agent's involvement = the sum of the stress of its stressed
links (in or out) + its own stress (max of error rate and p99 latency inflation) when that
is at least 0.5. The ``top_k`` agents with involvement > 0, highest first (ties by id).
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np

from pipelines.calibration import OK
from pipelines.topology.features import FeatureExtractor, WindowFeatures
from pipelines.topology.filtrations import StressFiltration
from pipelines.windowing import WindowSnapshot
from schemas import FEATURES_SCHEMA_VERSION
from schemas.arrow import METRICS

STRESSED = 0.5
_NAMES = FeatureExtractor.names()
_BETTI = [n for n in _NAMES if n.startswith("stress_h0_betti_t")], \
         [n for n in _NAMES if n.startswith("stress_h1_betti_t")]
_AT = "stress_h{}_betti_t0.5"


def ms(t) -> int:
    """Epoch milliseconds of seconds (float), a datetime, or milliseconds (int)."""
    if isinstance(t, datetime):
        return int(round(t.timestamp() * 1000))
    if isinstance(t, int | np.integer):
        return int(t)
    return int(round(float(t) * 1000))


def agent_key(tenant: str, agent: str) -> str:
    return f"{tenant}/{agent}"


def window_key(tenant: str, start_ms: int) -> str:
    return f"{tenant}/{start_ms}"


def involvement(snap: WindowSnapshot, stress: StressFiltration) -> np.ndarray:
    """(A,) involvement of each agent in the stressed links of the window (module doc)."""
    score = np.zeros(len(snap.agents))
    if not snap.agents:
        return score
    u, v, value = stress.edge_values(snap)
    s = 1.0 - value
    hot = s >= STRESSED
    np.add.at(score, u[hot], s[hot])
    np.add.at(score, v[hot], s[hot])
    err = np.nan_to_num(snap.metrics[:, METRICS.index("error_rate")])
    p99 = np.nan_to_num(snap.metrics[:, METRICS.index("latency_p99_ms")])
    infl = np.clip(np.log(np.maximum(p99, 1e-9) / stress.latency_ref_ms)
                   / np.log(stress.timeout_ms / stress.latency_ref_ms), 0.0, 1.0)
    own = np.maximum(np.clip(err, 0.0, 1.0), infl)
    return score + np.where(own >= STRESSED, own, 0.0)


def implicated(snap: WindowSnapshot, stress: StressFiltration, top_k: int,
               score: np.ndarray | None = None) -> list[tuple[str, float]]:
    """The ``top_k`` most involved agents as (agent id, involvement), highest first."""
    score = involvement(snap, stress) if score is None else score
    cand = np.flatnonzero(score > 0)
    if len(cand) > top_k > 0:  # only the top_k largest (and their ties) can be ranked
        cand = cand[score[cand] >= np.partition(score[cand], -top_k)[-top_k]]
    order = sorted(cand.tolist(), key=lambda i: (-score[i], snap.agents[i]))
    return [(snap.agents[i], round(float(score[i]), 6)) for i in order[:top_k]]


AGENT_PROPS = (*METRICS, "involvement", "samples")  # the values change detection compares


def _clean(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def agent_rows(snap: WindowSnapshot, score: np.ndarray) -> list[dict]:
    """One row per agent of the window: its aggregate metrics (NaN left out) and involvement."""
    start = ms(snap.window_start)
    rows = []
    for i, agent in enumerate(snap.agents):
        props = {m: v for m, x in zip(METRICS, snap.metrics[i]) if (v := _clean(x)) is not None}
        props["involvement"] = round(float(score[i]), 6)
        props["samples"] = int(snap.n_samples[i])
        rows.append({"key": agent_key(snap.tenant, agent), "tenant": snap.tenant, "id": agent,
                     "window": start, "props": props})
    return rows


def call_rows(snap: WindowSnapshot) -> list[dict]:
    """One row per directed (caller, callee) edge of the window."""
    start, t, names = ms(snap.window_start), snap.tenant, snap.agents
    return [{"src": agent_key(t, names[a]), "dst": agent_key(t, names[b]), "src_id": names[a],
             "dst_id": names[b], "tenant": t, "window": start, "weight": int(c), "errors": int(e),
             "latency_ms": _clean(lat)}
            for a, b, c, e, lat in zip(snap.edge_src.tolist(), snap.edge_dst.tolist(), snap.edge_count,
                                       snap.edge_errors, snap.edge_latency_ms)]


def window_row(snap: WindowSnapshot, hot: list[tuple[str, float]], slide_ms: int | None) -> dict:
    """The snapshot part of the Window node (+ the keys of its neighbouring slots)."""
    start, end = ms(snap.window_start), ms(snap.window_end)
    slide = slide_ms or (end - start)
    return {"key": window_key(snap.tenant, start), "tenant": snap.tenant, "start": start, "end": end,
            "pane": int(snap.pane_index),
            "prev": window_key(snap.tenant, start - slide), "next": window_key(snap.tenant, start + slide),
            "props": {"n_agents": len(snap.agents), "n_edges": int(len(snap.edge_src)),
                      "n_records": int(snap.n_records), "pane_timing": snap.pane_timing,
                      "implicated": [agent_key(snap.tenant, a) for a, _ in hot],
                      "implicated_scores": [s for _, s in hot]}}


def betti_numbers(vec: np.ndarray) -> tuple[list[int], list[int]]:
    """Betti numbers of the stress filtration at each threshold (H0, H1): the feature
    vector stores Betti curves divided by the number of agents, recovered from
    ``n_agents_log10`` (= log10(1 + n))."""
    n = max(int(round(10 ** vec[_NAMES.index("n_agents_log10")] - 1)), 1)
    return tuple([int(round(vec[_NAMES.index(name)] * n)) for name in names] for names in _BETTI)


def topology_row(wf: WindowFeatures, vec: np.ndarray) -> dict:
    """The topology part of the Window node: feature vector (versioned), Betti numbers at
    stress 0.5, stability and signature.

    stability = 1 / (1 + W), W = Wasserstein distance of the stress diagrams (H0 + H1) to
    the tenant's previous window: 1 = unchanged topology, towards 0 = reshaping; absent
    for a tenant's first window. signature = the Betti numbers of H0 and H1 at every stress
    threshold (``H0 3-2-1-1-1|H1 0-1-0-0-0``): equal signatures, same topological shape.
    """
    start = ms(wf.window_start)
    b0, b1 = betti_numbers(vec)
    at = [float(t.rsplit("_t", 1)[1]) for t in _BETTI[0]].index(0.5)
    props = {"feature_version": FEATURES_SCHEMA_VERSION, "features": [float(x) for x in vec],
             "betti_0": b0[at], "betti_1": b1[at],
             "signature": f"H0 {'-'.join(map(str, b0))}|H1 {'-'.join(map(str, b1))}"}
    if vec[_NAMES.index("has_previous")] > 0:
        w = float(vec[_NAMES.index("stress_wasserstein_h0")] + vec[_NAMES.index("stress_wasserstein_h1")])
        props["stability"] = round(1.0 / (1.0 + w), 9)
    return {"key": window_key(wf.tenant, start), "tenant": wf.tenant, "start": start,
            "end": ms(wf.window_end), "pane": int(wf.pane_index), "props": props}


def certificate_props(cert: dict | None) -> dict:
    """A consensus quorum certificate as Prediction properties, no schema change needed:
    scalars and lists of scalars as ``qc_<name>``, anything else JSON; the whole as JSON."""
    if not cert:
        return {}
    out: dict = {"certificate": json.dumps(cert, sort_keys=True, default=str)}
    for k, v in cert.items():
        if isinstance(v, str | int | float | bool):
            out[f"qc_{k}"] = v
        elif isinstance(v, list | tuple) and all(isinstance(x, str | int | float | bool) for x in v):
            out[f"qc_{k}"] = list(v)
        elif v is not None:
            out[f"qc_{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def prediction_row(row: dict) -> dict:
    """A prediction row (``pipelines.predictions.PREDICTION_ROW``, plus an optional
    ``certificate`` dict from the consensus stage) -> parameters of PREDICTION (a row
    without ``status``, from before verdict statuses, is ``ok``)."""
    start, end = ms(row["window_start"]), ms(row["window_end"])
    key = window_key(row["tenant"], start)
    props = {"probability": float(row["probability"]), "horizon_s": float(row["horizon_s"]),
             "history_windows": int(row["history_windows"]),
             "feature_version": int(row["feature_version"]), "predictor": str(row["predictor"]),
             "status": str(row.get("status") or OK), **certificate_props(row.get("certificate"))}
    return {"key": key, "window_key": key, "tenant": row["tenant"], "start": start, "end": end,
            "pane": int(row["pane_index"]), "props": props}
