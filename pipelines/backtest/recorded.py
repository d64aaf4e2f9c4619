"""Recorded telemetry (e.g. the testbed corpus) as labelled window features, without an
engine: the contract parser, the pipeline's own windowing and feature code, per tenant.

``aura backtest --input`` scores the same files through the Beam batch job with prediction
and consensus; this path is for fitting and comparing models on recorded fleets quickly
(``models.train`` calibration data, ``bench/bench_generalisation.py``), and gives the same
feature vectors (a test checks it).
"""

from __future__ import annotations

import numpy as np

from pipelines.backtest.scoring import ScenarioWindows
from pipelines.telemetry import parse_file
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.sequence import fold
from pipelines.windowing import WindowSpec, build_snapshot


def tenant_windows(paths: list[str], spec: WindowSpec | None = None,
                   extractor: FeatureExtractor | None = None) -> tuple[dict, dict]:
    """Per tenant: (window starts, window ends, (W, F) features) in time order, and the
    record counts {read, windowed, dead} (dead letters by reason)."""
    spec, extractor = spec or WindowSpec(), extractor or FeatureExtractor()
    by_window: dict[tuple[str, float], list[dict]] = {}
    counts = {"read": 0, "windowed": 0, "dead": {}}
    for path in paths:
        res = parse_file(path)
        counts["read"] += res.n_read
        for d in res.dead:
            counts["dead"][d.reason] = counts["dead"].get(d.reason, 0) + 1
        for r in res.records:
            for start in spec.starts(r["event_time"]):
                by_window.setdefault((r["tenant"], start), []).append(r)
            counts["windowed"] += 1
    per_tenant: dict[str, list] = {}
    for (tenant, start), recs in sorted(by_window.items()):
        snap = build_snapshot(tenant, start, start + spec.size_s, recs)
        per_tenant.setdefault(tenant, []).append(extractor.window(snap))
    out = {}
    for tenant, wfs in per_tenant.items():
        rows = fold(extractor, wfs, spec.slide)
        out[tenant] = (np.array([wf.window_start for wf, _ in rows]),
                       np.array([wf.window_end for wf, _ in rows]),
                       np.array([v for _, v in rows]).reshape(len(rows), len(extractor.names())))
    return out, counts


def scenario(doc: dict, starts_ends_feats: tuple, horizon_s: float, family: str = "testbed"
             ) -> ScenarioWindows:
    """A labels document and its tenant's windows as a scored scenario."""
    _, ends, feats = starts_ends_feats
    cascades = doc.get("cascades", [])
    triggers = [c["trigger_time"] for c in cascades] + [f["trigger_time"] for f in doc.get("fizzles", [])]
    return ScenarioWindows(doc["tenant"], family, int(doc.get("n_agents", 0)), str(doc.get("graph", "")),
                           ends, feats, np.array([c["onset"] for c in cascades], dtype=float),
                           np.array([c["end"] for c in cascades], dtype=float),
                           np.sort(np.array(triggers, dtype=float)), float(doc["end"] - doc["start"]),
                           horizon_s)


def corpus_split(corpus: str, split: str, horizon_s: float = 60.0) -> tuple[list[ScenarioWindows], dict]:
    """A split of a testbed corpus (``aura corpus``) as scored scenarios in tenant order,
    and per tenant its (starts, ends, features)."""
    import glob
    import json
    import os

    paths = sorted(glob.glob(os.path.join(corpus, split, "*.ndjson")) +
                   glob.glob(os.path.join(corpus, split, "*.parquet")))
    if not paths:
        raise FileNotFoundError(f"no runs in {os.path.join(corpus, split)}; record them with `aura corpus`")
    with open(os.path.join(corpus, split, "labels.json")) as fh:
        docs = {d["tenant"]: d for d in json.load(fh)["scenarios"]}
    windows, _ = tenant_windows(paths)
    missing = sorted(set(windows) - set(docs))
    if missing:
        raise ValueError(f"{split}: telemetry without labels for {missing}")
    return [scenario(docs[t], windows[t], horizon_s) for t in sorted(windows)], windows
