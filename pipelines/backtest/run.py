"""``aura backtest``: the splits, the Beam batch runs, the methods, frozen thresholds, metrics.

Splits (scenarios never shared between them):

- fit: the committed model's own training scenarios (its ``DatasetConfig`` from
  ``model.json``), simulated again through the backtest pipeline and cached; baselines and
  ablations learn on its training part (``models.train.split_scenarios``), as the CfC did.
- validation: new seeds from the training family; every method's thresholds are chosen
  here and frozen before any test window is scored.
- test: new seeds from the training family (in distribution) and from a family training
  never saw (fleet size ``ood_agents``: out of distribution), reported apart and pooled.

With ``input`` the validation and test windows come from recorded telemetry plus its labels
file instead; the operator chooses which tenants go where (``input_splits``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from pipelines.backtest import baselines as bl
from pipelines.backtest.code_hash import code_hash
from pipelines.backtest.fleet_scoring import score_fleets, threshold_for_quiet_budget
from pipelines.backtest.labels import load_labels, reconcile
from pipelines.backtest.report import family_note
from pipelines.backtest.scoring import ScenarioWindows, score_split, threshold_for_budget, threshold_for_f1
from pipelines.backtest.uncertainty import bootstrap_bar
from pipelines.backtest.uncertainty import describe as describe_intervals
from pipelines.inference import DEFAULT_MODEL_DIR, OnnxPredictor, PredictorSpec
from pipelines.simulation.scenario import ScenarioConfig
from pipelines.topology.features import FeatureExtractor
from pipelines.windowing import WindowSpec

ID, OOD = "in_distribution", "out_of_distribution"
# scenarios per pipeline run: the DirectRunner holds a run's windows in memory (96 training
# scenarios at once took more than 22 GB; 22 evaluation scenarios with prediction ~6 GB)
SCENARIOS_PER_RUN = 16
# the code that makes windows and features: the fit split's cache key changes with it
WINDOW_CODE = ("pipelines/simulation/*.py", "pipelines/topology/*.py", "pipelines/windowing.py",
               "pipelines/backtest/columnar.py")
AURA = "aura_cfc"


@dataclass
class BacktestConfig:
    """Configuration of ``aura backtest`` (times in seconds)."""

    out: str = "output/backtest"
    input: str | None = None  # a directory of NDJSON/Parquet telemetry (else: simulate)
    labels: str | None = None  # its labels file (default <input>/labels.json, then <input>/../labels.json)
    validation_tenants: tuple[str, ...] = ()  # with input: tenant names or fnmatch globs
    test_tenants: tuple[str, ...] = ()
    model_dir: str | None = None  # None: the committed models/cascade_cfc
    val_seeds: tuple[int, ...] = tuple(range(1000, 1024))
    test_seeds: tuple[int, ...] = tuple(range(2000, 2024))
    ood_seeds: tuple[int, ...] = tuple(range(3000, 3012))
    ood_agents: tuple[int, ...] = (400,)  # fleet sizes training never saw
    duration_s: float | None = None  # None: as in training
    fit_scenarios: int | None = None  # None: all of the model's training scenarios
    fit_duration_s: float | None = None  # None: as in training (only for quick runs)
    false_alarm_budget: float = 1.0  # per fleet-hour, on validation: the operating threshold
    consensus: bool = True
    validators: int = 4
    ablation_epochs: int | None = None  # None: as the committed model was trained
    timelines: int = 4  # risk timelines drawn in the report
    cache: bool = True
    progress: bool = True

    def validate(self) -> BacktestConfig:
        if self.input is None and not (self.val_seeds and (self.test_seeds or self.ood_seeds)):
            raise ValueError("give validation seeds and test seeds (or --input DIR)")
        if self.input is None and (self.validation_tenants or self.test_tenants):
            raise ValueError("--validation-tenants/--test-tenants choose among recorded tenants; "
                             "give --input")
        if self.false_alarm_budget <= 0:
            raise ValueError("false_alarm_budget must be positive")
        if self.validators < 4 or (self.validators - 1) % 3:
            raise ValueError(f"validators must be 3f+1 with f >= 1, got {self.validators}")
        return self


# -- splits -----------------------------------------------------------------------------------
def model_training(model_dir: str) -> tuple[dict, dict]:
    """(model.json, its training configuration) of a model artifact."""
    with open(os.path.join(model_dir, "model.json")) as fh:
        meta = json.load(fh)
    return meta, meta["metrics"]["config"]


def training_dataset(train_cfg: dict):
    from pipelines.training_data import DatasetConfig

    d = dict(train_cfg["data"])
    d["window"] = WindowSpec(**d["window"])
    for k in ("agents", "graphs", "mechanisms"):
        d[k] = tuple(d[k])
    return DatasetConfig(**d)


def family_scenarios(seeds: tuple[int, ...], agents: tuple[int, ...], graphs: tuple[str, ...],
                     mechanisms: tuple[str, ...], duration_s: float, prefix: str) -> list[ScenarioConfig]:
    """One scenario per seed; fleet size and graph family drawn from the seed."""
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        out.append(ScenarioConfig(n_agents=int(rng.choice(agents)), duration_s=duration_s, seed=int(seed),
                                  graph=str(rng.choice(graphs)), tenant=f"{prefix}-{seed}",
                                  mechanisms=tuple(mechanisms)))
    return out


# -- windows ----------------------------------------------------------------------------------
def assemble(results, docs: list[dict], horizon_s: float, family_of) -> list[ScenarioWindows]:
    """One ScenarioWindows per labelled tenant with feature rows, in tenant order."""
    out = []
    for doc in sorted(docs, key=lambda d: d["tenant"]):
        if doc["tenant"] not in results.features:
            continue
        _, ends, feats = results.features[doc["tenant"]]
        cascades = doc.get("cascades", [])
        triggers = [c["trigger_time"] for c in cascades] + [f["trigger_time"] for f in doc.get("fizzles", [])]
        out.append(ScenarioWindows(
            doc["tenant"], family_of(doc), int(doc.get("n_agents", 0)), str(doc.get("graph", "")),
            ends, feats, np.array([c["onset"] for c in cascades], dtype=float),
            np.array([c["end"] for c in cascades], dtype=float), np.sort(np.array(triggers, dtype=float)),
            float(doc["end"] - doc["start"]), horizon_s))
    return out


def aura_scores(results, s: ScenarioWindows) -> np.ndarray:
    """Committed probability per window; 0 (no alarm) where consensus committed none or the
    verdict's status is not ok (calibrating, out of distribution: alerts are held back)."""
    starts = results.features[s.tenant][0]
    out = []
    for w in starts:
        row = results.predictions.get((s.tenant, int(w)))
        ok = row is not None and row.get("status", "ok") == "ok"
        out.append(float(row["probability"]) if ok else 0.0)
    return np.array(out)


def aura_trusted(results, s: ScenarioWindows) -> np.ndarray:
    """Windows with a committed verdict whose status is ok: where AURA can alarm or is
    credited with quiet time (``fleet_scoring``)."""
    starts = results.features[s.tenant][0]
    rows = [results.predictions.get((s.tenant, int(w))) for w in starts]
    return np.array([r is not None and r.get("status", "ok") == "ok" for r in rows], dtype=bool)


def windows_without_verdict(results, scenarios: list[ScenarioWindows]) -> int:
    """Scored windows with no committed verdict (disputed, or never predicted): they raised
    no alarm, so ``aura_scores`` gives them 0, and the run says how many there were."""
    return sum((s.tenant, int(w)) not in results.predictions
               for s in scenarios for w in results.features[s.tenant][0])


def _save_windows(path: str, data: list[ScenarioWindows]) -> None:
    arrays, meta = {}, []
    for i, s in enumerate(data):
        for k in ("window_end", "features", "onsets", "cascade_ends", "triggers"):
            arrays[f"{i}_{k}"] = getattr(s, k)
        meta.append({"tenant": s.tenant, "family": s.family, "n_agents": s.n_agents, "graph": s.graph,
                     "duration_s": s.duration_s, "horizon_s": s.horizon_s})
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def _load_windows(path: str) -> list[ScenarioWindows]:
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return [ScenarioWindows(m["tenant"], m["family"], m["n_agents"], m["graph"], z[f"{i}_window_end"],
                            z[f"{i}_features"], z[f"{i}_onsets"], z[f"{i}_cascade_ends"], z[f"{i}_triggers"],
                            m["duration_s"], m["horizon_s"]) for i, m in enumerate(meta)]


class _Progress:
    """tqdm bars for scenarios and windows (updated from the pipeline's DoFns, in process)."""

    def __init__(self, enabled: bool, label: str, sources: int, windows: int):
        self.bars = []
        if enabled:
            from tqdm import tqdm

            self.bars = [tqdm(total=sources, desc=f"{label}: scenarios", unit="scn", file=sys.stderr,
                              position=0, leave=False, dynamic_ncols=True),
                         tqdm(total=windows, desc=f"{label}: windows", unit="win", file=sys.stderr,
                              position=1, leave=False, dynamic_ncols=True)]

    def hooks(self) -> dict | None:
        if not self.bars:
            return None
        return {"sources": self.bars[0].update, "windows": self.bars[1].update}

    def close(self):
        for b in self.bars:
            b.close()


def _run(sources, spec, out, extractor, predictor, consensus, cfg: BacktestConfig, label: str):
    """Simulated scenarios go through the pipeline ``SCENARIOS_PER_RUN`` at a time (one
    tenant each, so the runs' results add up); recorded files in one run (a tenant may span
    files)."""
    from pipelines.beam.backtest import run_backtest_pipeline

    simulated = all(isinstance(s, ScenarioConfig) for s in sources)
    per = SCENARIOS_PER_RUN if simulated else max(1, len(sources))
    runs = max(1, -(-len(sources) // per))
    res = None
    for r in range(runs):
        part = sources[r * per:(r + 1) * per]
        windows = int(sum(sc.duration_s for sc in part) / spec.size_s) if simulated else 0
        bar = _Progress(cfg.progress, f"{label} {r + 1}/{runs}" if runs > 1 else label, len(part), windows)
        try:
            got = run_backtest_pipeline(part, spec, os.path.join(out, f"run-{r}") if runs > 1 else out,
                                        extractor, predictor, consensus, bar.hooks())
        finally:
            bar.close()
        res = got if res is None else res.merge(got)
    return res


def fit_windows(cfg: BacktestConfig, train_cfg: dict, spec: WindowSpec, extractor, log
                ) -> tuple[list[ScenarioWindows], dict]:
    """The model's training scenarios as backtest windows (cached by configuration + code)."""
    from pipelines.backtest.ablation import to_training
    from pipelines.training_data import dataset_hash

    ds = training_dataset(train_cfg)
    scenarios = ds.scenarios()[: cfg.fit_scenarios or None]
    if cfg.fit_duration_s:
        scenarios = [ScenarioConfig(**{**asdict_shallow(sc), "duration_s": cfg.fit_duration_s})
                     for sc in scenarios]
    key = hashlib.sha256(json.dumps([repr(sc) for sc in scenarios]).encode()
                         + code_hash(*WINDOW_CODE).encode()).hexdigest()[:16]
    cache_dir = os.path.join(cfg.out, "cache")
    path = os.path.join(cache_dir, f"fit-windows-{key}.npz")
    if cfg.cache and os.path.exists(path):
        log(f"fit split: {len(scenarios)} training scenarios (cached, {path})")
        data = _load_windows(path)
        info = {"cached": True, "events": None, "elapsed_s": 0.0}
    else:
        log(f"fit split: simulating the model's {len(scenarios)} training scenarios through the pipeline")
        res = _run(scenarios, spec, os.path.join(cfg.out, "fit"), extractor, None, None, cfg, "fit")
        data = assemble(res, res.labels, ds.horizon_s, lambda d: "training")
        events, elapsed, reconciles = res.read, res.elapsed_s, res.reconciles
        order = {sc.tenant: i for i, sc in enumerate(scenarios)}
        data.sort(key=lambda s: order[s.tenant])
        os.makedirs(cache_dir, exist_ok=True)
        if cfg.cache:
            _save_windows(path, data)
        info = {"cached": False, "events": events, "elapsed_s": round(elapsed, 2), "reconciles": reconciles}
    info["scenarios"] = len(data)
    info["data_sha256"] = dataset_hash(to_training(data))
    return data, info


def asdict_shallow(sc: ScenarioConfig) -> dict:
    return {k: getattr(sc, k) for k in sc.__dataclass_fields__}


def _input_sources(cfg: BacktestConfig) -> tuple[list[str], list[dict]]:
    from pipelines.inputs import expand_inputs

    paths = expand_inputs(cfg.input)
    cands = [cfg.labels] if cfg.labels else [os.path.join(cfg.input, "labels.json"),
                                             os.path.join(os.path.dirname(os.path.abspath(cfg.input)),
                                                          "labels.json")]
    for c in cands:
        if c and os.path.exists(c):
            return paths, load_labels(c)
    raise FileNotFoundError(f"no labels file for {cfg.input} (tried {', '.join(cands)}); give --labels")


SPLIT_NAMES = {"calibration": "validation", "validation": "validation", "evaluation": "test", "test": "test"}


CHOOSE = ("choose with --validation-tenants and --test-tenants (comma-separated tenant names or "
          "globs; given one, the other split is every other tenant), or a `split` "
          "(calibration/evaluation) in every labels document")
BY_FLAGS, BY_LABELS, BY_HASH = ("--validation-tenants/--test-tenants", "the labels' split field",
                                "a hash of the tenant name (the fallback)")


def split_rule(docs: list[dict], validation: tuple[str, ...] = (), test: tuple[str, ...] = ()) -> str:
    """What decides the split of recorded tenants: the flags, else the labels' ``split``
    when every document has one, else the hash of the name."""
    if validation or test:
        return BY_FLAGS
    return BY_LABELS if docs and all("split" in d for d in docs) else BY_HASH


def _matching(tenants: list[str], patterns: tuple[str, ...], flag: str) -> set[str]:
    out: set[str] = set()
    for p in patterns:
        hit = {t for t in tenants if fnmatch.fnmatchcase(t, p)}
        if not hit:
            raise ValueError(f"{flag} {p!r} matches no tenant in the labels ({', '.join(tenants)})")
        out |= hit
    return out


def input_splits(docs: list[dict], validation: tuple[str, ...] = (), test: tuple[str, ...] = (),
                 log: Callable[[str], None] | None = None) -> dict[str, str]:
    """Tenant -> "validation" | "test" for recorded telemetry, checked before any work.

    Precedence: ``validation``/``test`` (names or fnmatch globs; given one, the other split
    is every other tenant; given both, a tenant in neither is not scored), else the labels'
    own ``split`` (``calibration``/``evaluation``, as the testbed corpus writes them) when
    every document has one, else a hash of the tenant name. Both splits must have tenants
    (thresholds are frozen on validation); ``log`` gets the split and what decided it."""
    tenants = sorted(d["tenant"] for d in docs)
    rule = split_rule(docs, validation, test)
    if rule == BY_FLAGS:
        val = _matching(tenants, validation, "--validation-tenants")
        tst = _matching(tenants, test, "--test-tenants")
        if val & tst:
            raise ValueError(f"tenants in both --validation-tenants and --test-tenants: {sorted(val & tst)}")
        val = val if validation else set(tenants) - tst
        tst = tst if test else set(tenants) - val
        split_of = {**{t: "validation" for t in val}, **{t: "test" for t in tst}}
    elif rule == BY_LABELS:
        bad = sorted({d["split"] for d in docs} - set(SPLIT_NAMES))
        if bad:
            raise ValueError(f"labels: unknown split {bad}; use one of {sorted(SPLIT_NAMES)}")
        split_of = {d["tenant"]: SPLIT_NAMES[d["split"]] for d in docs}
    elif any("split" in d for d in docs):
        raise ValueError("labels: some scenarios name a split and some do not; name it for all or none, "
                         "or choose with --validation-tenants and --test-tenants")
    else:
        split_of = {t: "validation" if int(hashlib.sha256(t.encode()).hexdigest(), 16) % 2 == 0 else "test"
                    for t in tenants}
    unscored = [t for t in tenants if t not in split_of]
    empty = [k for k in ("validation", "test") if k not in split_of.values()]
    if empty:
        went = ", ".join(f"{t} -> {split_of.get(t, 'not scored')}" for t in tenants)
        raise ValueError(f"the split by {rule} leaves no {' and no '.join(empty)} tenants ({went}); {CHOOSE}")
    if log:
        log(f"split by {rule}: validation {sorted(t for t, k in split_of.items() if k == 'validation')}, "
            f"test {sorted(t for t, k in split_of.items() if k == 'test')}"
            + (f"; not scored: {', '.join(unscored)} (in neither split)" if unscored else ""))
    return split_of


# -- the run ----------------------------------------------------------------------------------
def run_backtest(cfg: BacktestConfig, log=print) -> dict:
    """The whole backtest; writes ``metrics.json`` and ``report.html`` into ``cfg.out``."""
    from models.train import split_scenarios
    from pipelines.consensus.spec import ConsensusSpec
    from pipelines.consensus.validator import RiskBands

    cfg.validate()
    t_start = time.perf_counter()
    model_dir = cfg.model_dir or DEFAULT_MODEL_DIR
    meta, train_cfg = model_training(model_dir)
    ds = training_dataset(train_cfg)
    spec, horizon = ds.window, float(meta["horizon_s"])
    extractor = FeatureExtractor()

    # the evaluation splits first: a bad labels file or seed list fails before any simulation
    train_seeds = {sc.seed for sc in ds.scenarios()}
    train_agents, train_graphs = set(ds.agents), set(ds.graphs)
    if cfg.input:
        sources, docs = _input_sources(cfg)
        split_of = input_splits(docs, cfg.validation_tenants, cfg.test_tenants, log)
    else:
        duration = cfg.duration_s or ds.duration_s
        clash = train_seeds & set(cfg.val_seeds + cfg.test_seeds + cfg.ood_seeds)
        if clash:
            raise ValueError(f"seeds {sorted(clash)} were used in training; pick others")
        if set(cfg.ood_agents) & train_agents:
            raise ValueError(f"out-of-distribution fleet sizes {cfg.ood_agents} overlap training's "
                             f"{sorted(train_agents)}")
        val = family_scenarios(cfg.val_seeds, ds.agents, ds.graphs, ds.mechanisms, duration, "val")
        tid = family_scenarios(cfg.test_seeds, ds.agents, ds.graphs, ds.mechanisms, duration, "id")
        tood = family_scenarios(cfg.ood_seeds, cfg.ood_agents, ds.graphs, ds.mechanisms, duration, "ood")
        sources = [*val, *tid, *tood]
        split_of = {sc.tenant: "validation" if sc in val else "test" for sc in sources}
    os.makedirs(cfg.out, exist_ok=True)

    fit, fit_info = fit_windows(cfg, train_cfg, spec, extractor, log)
    fit_info["matches_model_training_data"] = fit_info["data_sha256"] == meta.get("training_data_sha256")
    tr_idx, va_idx, _ = split_scenarios(len(fit), train_cfg["test_fraction"], train_cfg["val_fraction"],
                                        train_cfg["seed"])
    fit_train = [fit[i] for i in tr_idx]

    # validation + test: the streaming job's stages, with prediction and consensus
    predictor = PredictorSpec("onnx", model_dir)
    consensus = ConsensusSpec((predictor,) * cfg.validators, 1e-4, RiskBands(), 256) \
        if cfg.consensus else None
    log(f"evaluation: {len(sources)} {'files' if cfg.input else 'scenarios'} through parse, window, "
        f"features, predict{', consensus' if consensus else ''} (Beam batch)")
    res = _run(sources, spec, os.path.join(cfg.out, "pipeline"), extractor, predictor, consensus, cfg,
               "backtest")
    if not cfg.input:
        docs = res.labels

    def family_of(doc: dict) -> str:
        seen = doc.get("n_agents") in train_agents and doc.get("graph") in train_graphs
        return ID if seen else OOD

    coverage = reconcile(docs, {t: len(f[0]) for t, f in res.features.items()})
    if coverage["telemetry_without_labels"] or coverage["labels_without_telemetry"]:
        log(f"not scored: {len(coverage['telemetry_without_labels'])} tenants with telemetry but no labels "
            f"{sorted(coverage['telemetry_without_labels'])}, {len(coverage['labels_without_telemetry'])} "
            f"labelled tenants without telemetry {coverage['labels_without_telemetry']}")
    evald = [s for s in assemble(res, docs, horizon, family_of) if s.tenant in split_of]
    val_set = [s for s in evald if split_of.get(s.tenant) == "validation"]
    test_set = [s for s in evald if split_of.get(s.tenant) == "test"]
    if not val_set or not test_set:
        raise ValueError(f"need labelled windows in both splits (validation {len(val_set)}, "
                         f"test {len(test_set)} scenarios): a split's tenants have no telemetry")

    # methods
    from pipelines.backtest.ablation import train_without_topology

    ablation_cfg = dict(train_cfg)
    if cfg.ablation_epochs:
        ablation_cfg["epochs"] = cfg.ablation_epochs
    cols = bl.columns(bl.NON_TOPOLOGY)
    abl_dir = train_without_topology(fit, cols, ablation_cfg, os.path.join(cfg.out, "cache"), log)
    abl = OnnxPredictor(abl_dir)
    abl.load_model()
    methods = [bl.StaticThresholdRule(), bl.EarlyWarningSignals(), bl.IsolationForestBaseline(),
               bl.LogisticAllFeatures(), bl.SequenceScorer(abl, cols, "cfc_no_topology")]
    scores: dict[str, dict[str, np.ndarray]] = {AURA: {s.tenant: aura_scores(res, s) for s in evald}}
    uncommitted = windows_without_verdict(res, evald)
    if uncommitted:
        log(f"{uncommitted} scored windows have no committed verdict (disputed or not predicted): "
            f"AURA scores them 0")
    for m in methods:
        m.fit(fit_train)
        scores[m.name] = {s.tenant: np.asarray(m.score(s), dtype=float) for s in evald}

    trusted = {AURA: {s.tenant: aura_trusted(res, s) for s in evald}}
    metrics = evaluate(scores, val_set, test_set, cfg.false_alarm_budget, trusted)
    metrics["bar"] = check_bar(metrics)
    if metrics["bar"]:
        best = metrics["bar"]["best_baseline"]
        metrics["bar"]["confidence"] = bootstrap_bar(
            test_set, [scores[AURA][s.tenant] for s in test_set],
            [scores[best][s.tenant] for s in test_set] if best else None,
            metrics["thresholds"][AURA]["operating"])
    metrics["run"] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "model_dir": model_dir, "model_training_data_sha256": meta.get("training_data_sha256"),
        "fit_split": fit_info, "fit_train_scenarios": len(fit_train), "fit_validation_scenarios": len(va_idx),
        "ablation_model": abl_dir, "non_topology_features": bl.NON_TOPOLOGY,
        "splits": {k: [s.tenant for s in ss] for k, ss in (("validation", val_set), ("test", test_set))},
        "split_by": split_rule(docs, cfg.validation_tenants, cfg.test_tenants) if cfg.input else "seeds",
        "unassigned_tenants": sorted({d["tenant"] for d in docs} - set(split_of)),
        "tenants": coverage,
        "families": {s.tenant: {"family": s.family, "n_agents": s.n_agents, "graph": s.graph} for s in evald},
        "pipeline": {"events": res.read, "elapsed_s": round(res.elapsed_s, 2),
                     "events_per_s": round(res.read / max(res.elapsed_s, 1e-9)),
                     "reconciles": res.reconciles, "counts": res.counts,
                     "committed": len(res.predictions), "disputed": len(res.disputed),
                     "scored_windows_without_committed_verdict": uncommitted,
                     "consensus": "BFT (pipelines/beam/consensus.py)" if consensus else
                     "off: predictions pass through uncommitted (--no-consensus)"},
        "horizon_s": horizon, "window_s": spec.size_s,
        "false_alarm_budget_per_fleet_hour": cfg.false_alarm_budget,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    with open(os.path.join(cfg.out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2, default=_json_default)
        fh.write("\n")
    from pipelines.backtest.report import write_report

    write_report(os.path.join(cfg.out, "report.html"), metrics, test_set,
                 {n: [scores[n][s.tenant] for s in test_set] for n in scores}, cfg.timelines)
    metrics["run"]["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return metrics


def freeze_thresholds(val_set: list[ScenarioWindows], scores: dict[str, np.ndarray], budget: float
                      ) -> dict[str, float]:
    """A method's thresholds, from the validation split only: ``operating`` (at most
    ``budget`` false alarms per fleet-hour) and ``best_f1``."""
    v = [scores[s.tenant] for s in val_set]
    return {"operating": threshold_for_budget(val_set, v, budget), "best_f1": threshold_for_f1(val_set, v)}


def evaluate(scores: dict[str, dict[str, np.ndarray]], val_set: list[ScenarioWindows],
             test_set: list[ScenarioWindows], budget: float,
             trusted: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """Every method's thresholds frozen on validation, then its metrics per split
    (``trusted``: per method, the windows it gave a verdict it stands by; default all)."""
    trusted = trusted or {}

    def tr(name: str, ss: list[ScenarioWindows]) -> list[np.ndarray] | None:
        return [trusted[name][s.tenant] for s in ss] if name in trusted else None

    thresholds = {name: freeze_thresholds(val_set, by_tenant, budget) for name, by_tenant in scores.items()}
    parts = {"validation": val_set, "test": test_set}
    ids, oods = [s for s in test_set if s.family == ID], [s for s in test_set if s.family == OOD]
    if ids and oods:  # one family alone is the test split itself: not reported twice
        parts |= {"test_in_distribution": ids, "test_out_of_distribution": oods}
    methods = {name: {k: score_split(ss, [by_tenant[s.tenant] for s in ss], thresholds[name])
                      for k, ss in parts.items() if ss}
               for name, by_tenant in scores.items()}
    # the on-call view (pipelines/backtest/fleet_scoring.py): false alarms per quiet hour,
    # onsets warned between trigger and onset; its own threshold, also from validation only
    fleet_thr = {name: threshold_for_quiet_budget(val_set, [by_tenant[s.tenant] for s in val_set], budget,
                                                  trusted=tr(name, val_set))
                 for name, by_tenant in scores.items()}
    fleet = {name: {k: score_fleets(ss, [by_tenant[s.tenant] for s in ss], fleet_thr[name],
                                    trusted=tr(name, ss))
                    for k, ss in parts.items() if ss}
             for name, by_tenant in scores.items()}
    return {"methods": methods, "thresholds": thresholds,
            "fleet": {"thresholds": fleet_thr, "methods": fleet}}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_bar(metrics: dict, split: str = "test") -> dict:
    """The issue's bar on a split: PR-AUC margin over the best other method, event recall
    and median lead time at the operating threshold (at most the budgeted false alarms per
    fleet-hour on validation)."""
    ms = metrics["methods"]
    if split not in ms.get(AURA, {}):
        return {}
    aura = ms[AURA][split]
    others = {n: m[split]["pr_auc"] for n, m in ms.items()
              if n != AURA and m.get(split, {}).get("pr_auc") is not None}
    best_name = max(others, key=others.get) if others else None
    best = others.get(best_name) if best_name else None
    op = aura["at_threshold"]["operating"]
    margin = aura["pr_auc"] - best if aura["pr_auc"] is not None and best is not None else None
    lead = op["lead_time_s"]["median"]
    return {
        "split": split,
        "pr_auc": aura["pr_auc"], "best_baseline": best_name, "best_baseline_pr_auc": best,
        "pr_auc_margin": margin, "pr_auc_margin_ok": margin is not None and margin >= 0.10,
        "event_recall_at_operating": op["event_recall"],
        "false_alarms_per_fleet_hour_at_operating": op["false_alarms_per_fleet_hour"],
        "recall_ok": (op["event_recall"] or 0) >= 0.8,
        "median_lead_time_s": lead, "lead_time_ok": lead is not None and lead >= 30.0,
        "met": bool(margin is not None and margin >= 0.10 and (op["event_recall"] or 0) >= 0.8
                    and lead is not None and lead >= 30.0),
    }


def headline(metrics: dict) -> str:
    """The lines ``aura backtest`` ends with."""
    lines = []
    for split in ("test", "test_in_distribution", "test_out_of_distribution", "validation"):
        rows = [(n, m[split]) for n, m in metrics["methods"].items() if split in m]
        if not rows:
            continue
        lines.append(f"{split} ({rows[0][1]['scenarios']} scenarios{family_note(metrics, split)})")
        lines.append(f"  {'method':<24}{'PR-AUC':>8}{'prec':>7}{'recall':>8}{'F1':>7}{'FA/h':>7}"
                     f"{'onsets warned':>15}{'median lead':>13}")
        for n, m in rows:
            op = m["at_threshold"]["operating"]
            f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
            lines.append(f"  {n:<24}{f(m['pr_auc']):>8}{f(op['precision'], 2):>7}{f(op['recall'], 2):>8}"
                         f"{f(op['f1'], 2):>7}{f(op['false_alarms_per_fleet_hour'], 1):>7}"
                         f"{op['onsets_warned']:>8}/{op['onsets']:<6}"
                         f"{f(op['lead_time_s']['median'], 0):>11} s")
    fleet = metrics.get("fleet", {}).get("methods", {})
    for split in ("test", "validation"):
        rows = [(n, m[split]) for n, m in fleet.items() if split in m]
        if rows:
            lines.append(f"{split}, as on call (threshold at <= budget false alarms per quiet hour on "
                         f"validation; pipelines/backtest/fleet_scoring.py)")
            lines.append(f"  {'method':<24}{'quiet h':>8}{'FA/quiet h':>11}{'warned':>10}{'late':>6}"
                         f"{'missed':>7}{'median lead':>13}")
            for n, m in rows:
                fa, lead = m["false_alarms_per_quiet_hour"], m["median_lead_s"]
                lines.append(f"  {n:<24}{m['quiet_hours']:>8.2f}{'-' if fa is None else f'{fa:.2f}':>11}"
                             f"{m['warned']:>5}/{m['onsets']:<4}{m['late']:>6}{m['missed']:>7}"
                             f"{'-' if lead is None else f'{lead:.0f} s':>13}")
    b = metrics.get("bar", {})
    if b:
        def yn(ok):
            return "yes" if ok else "NO"
        lines.append("the bar (pooled test split):")
        def num(v, fmt=".3f"):
            return "-" if v is None else format(v, fmt)
        lines.append(f"  PR-AUC {num(b['pr_auc'])} vs best baseline {b['best_baseline']} "
                     f"{num(b['best_baseline_pr_auc'])}: margin {num(b['pr_auc_margin'], '+.3f')} (>= 0.10: "
                     f"{yn(b['pr_auc_margin_ok'])})")
        er = b["event_recall_at_operating"]
        fa = b["false_alarms_per_fleet_hour_at_operating"]
        lines.append(f"  recall at <= 1 false alarm/fleet-hour (threshold frozen on validation): "
                     f"{'-' if er is None else f'{er:.2f}'} (test FA/h {'-' if fa is None else f'{fa:.2f}'}; "
                     f">= 0.8: {yn(b['recall_ok'])})")
        lead = b["median_lead_time_s"]
        lines.append(f"  median lead time: {'-' if lead is None else f'{lead:.0f} s'} "
                     f"(>= 30 s: {yn(b['lead_time_ok'])})")
        if b.get("confidence"):
            lines.append(f"  {describe_intervals(b['confidence'])}")
        lines.append(f"  bar met: {yn(b['met'])}")
    return "\n".join(lines)


__all__ = ["BacktestConfig", "run_backtest", "headline", "check_bar", "family_scenarios"]
