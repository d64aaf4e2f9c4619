"""Labelled window features from simulated scenarios: the training and evaluation data of
the prediction stage.

Each scenario's telemetry goes through the pipeline's own feature code path
(slide-aligned batches, ``build_snapshot``, the feature stage with its per-tenant
sequence step) without an engine around it; the simulator's records are not re-validated
(its tests parse them through the contract). A window is labelled positive when
a cascade onset falls within ``horizon_s`` after its end; windows inside an ongoing cascade
are flagged (``in_cascade``) so that training and scoring can leave them out.
Reproducible from one seed.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipelines.simulation.output import tick_records
from pipelines.simulation.scenario import MECHANISMS, Scenario, ScenarioConfig
from pipelines.topology.features import FeatureExtractor
from pipelines.topology.sequence import fold
from pipelines.windowing import WindowSpec, build_snapshot, slice_batches


@dataclass(frozen=True)
class DatasetConfig:
    """Which scenarios to simulate: drawn from ``seed`` (sizes, graphs, mechanisms)."""

    seed: int = 0
    n_scenarios: int = 192
    agents: tuple[int, ...] = (60, 120, 200)
    graphs: tuple[str, ...] = ("layered", "scale_free")
    mechanisms: tuple[str, ...] = MECHANISMS
    duration_s: float = 900.0
    horizon_s: float = 60.0
    window: WindowSpec = field(default_factory=WindowSpec)

    def scenarios(self) -> list[ScenarioConfig]:
        rng = np.random.default_rng(self.seed)
        return [ScenarioConfig(n_agents=int(rng.choice(self.agents)), duration_s=self.duration_s,
                               seed=int(rng.integers(2**31)), graph=str(rng.choice(self.graphs)),
                               tenant=f"s{i:04d}", mechanisms=self.mechanisms)
                for i in range(self.n_scenarios)]


@dataclass
class ScenarioWindows:
    """One scenario's windows: features (W, F), end times, labels and flags."""

    tenant: str
    graph: str
    n_agents: int
    mechanisms: tuple[str, ...]
    features: np.ndarray
    window_end: np.ndarray
    label: np.ndarray  # 1: a cascade starts within the horizon after the window's end
    in_cascade: np.ndarray  # the window ends inside an ongoing cascade
    time_to_onset: np.ndarray  # seconds from window end to the next onset (inf if none)


def scenario_windows(cfg: ScenarioConfig, spec: WindowSpec, horizon_s: float,
                     extractor: FeatureExtractor | None = None) -> ScenarioWindows:
    """Simulate one scenario and turn its telemetry into labelled window features."""
    extractor = extractor or FeatureExtractor()
    sc = Scenario(cfg)
    windows, current, current_start = [], [], None
    for epoch_s, tel in sc.ticks():
        start = spec.starts(epoch_s)[-1]
        if current_start is not None and start != current_start:
            windows.append((current_start, current))
            current = []
        current_start = start
        # the simulator's records satisfy the contract (its tests parse them); they enter
        # here as the parser would hand them on, with event_time
        current.extend(tick_records(sc, epoch_s, tel))
    if current:
        windows.append((current_start, current))
    per_window = []
    for start, records in windows:
        for (tenant, batch), _ in slice_batches(records, spec):
            per_window.append(extractor.window(build_snapshot(tenant, start, start + spec.size_s, batch)))
    rows = fold(extractor, per_window, spec.slide)
    ends = np.array([wf.window_end for wf, _ in rows])
    onsets = np.array([lb.onset for lb in sc.labels if lb.cascade])
    spans = [(lb.onset, lb.end) for lb in sc.labels if lb.cascade]
    tto = np.full(len(ends), np.inf)
    for i, e in enumerate(ends):
        ahead = onsets[onsets > e] - e
        if len(ahead):
            tto[i] = ahead.min()
    return ScenarioWindows(
        cfg.tenant, cfg.graph, cfg.n_agents, tuple(sorted({lb.mechanism for lb in sc.labels})),
        np.array([vec for _, vec in rows]).reshape(len(rows), len(extractor.names())), ends,
        (tto <= horizon_s).astype(np.int8),
        np.array([any(a <= e <= b for a, b in spans) for e in ends], dtype=bool), tto)


def _one(args) -> ScenarioWindows:
    cfg, spec, horizon = args
    return scenario_windows(cfg, spec, horizon)


def build_dataset(cfg: DatasetConfig, workers: int = 2) -> list[ScenarioWindows]:
    """All scenarios of ``cfg`` (in order, whatever the number of worker processes)."""
    jobs = [(sc, cfg.window, cfg.horizon_s) for sc in cfg.scenarios()]
    if workers <= 1:
        return [_one(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_one, jobs))


def dataset_hash(data: list[ScenarioWindows]) -> str:
    """Content hash of a dataset (features, times, labels), for the model's metadata."""
    h = hashlib.sha256()
    for s in data:
        h.update(s.tenant.encode())
        for a in (s.features, s.window_end, s.label, s.in_cascade):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
