"""Train the CfC on simulated scenarios, split by scenario, against a logistic regression."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from models.cfc import CascadeCfC
from models.sequences import build_sequences
from pipelines.calibration import Calibration
from pipelines.topology.features import FeatureExtractor
from pipelines.training_data import DatasetConfig, ScenarioWindows, build_dataset, dataset_hash

# features whose absolute value means the same on any fleet, kept beside the calibrated ones
ABSOLUTE = ("unhealthy_frac", "error_rate_p50", "error_rate_p90", "error_rate_max", "edge_error_share",
            "stress_edges_stressed_frac")


@dataclass(frozen=True)
class TrainConfig:
    data: DatasetConfig = field(default_factory=DatasetConfig)
    seq_len: int = 8
    hidden: int = 16
    epochs: int = 15
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    drop: float = 0.1  # chance each earlier window is missing from a training sequence
    test_fraction: float = 0.25  # scenarios held out for the final metrics
    val_fraction: float = 0.2  # of the remaining scenarios, for choosing the epoch
    seed: int = 0
    calibration_windows: int = 0  # > 0: inputs relative to each tenant's first windows
    absolute: tuple[str, ...] = ABSOLUTE  # ... plus these as they are
    floor_fraction: float = 0.1  # minimum baseline scale, as a fraction of the feature's spread
    recorded_weight: float = 10.0  # loss weight of a window from recorded fleets (``train(recorded=)``)
    cascade_weight: float = 0.0  # > 0: windows inside cascades train too, as positives, this weight


@dataclass
class TrainResult:
    model: CascadeCfC
    metrics: dict
    data_hash: str  # the model's normalisation lives in its buffers (models/cfc.py)
    calibration: Calibration | None = None


def split_scenarios(n: int, test_fraction: float, val_fraction: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scenario indices for train, validation and test (never split within a scenario)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    n_val = max(1, int(round(val_fraction * (n - n_test))))
    return np.sort(perm[n_test + n_val:]), np.sort(perm[n_test:n_test + n_val]), np.sort(perm[:n_test])


def _scores(y: np.ndarray, p: np.ndarray) -> dict:
    both = 0 < y.sum() < len(y)
    return {"pr_auc": float(average_precision_score(y, p)) if both else None,
            "roc_auc": float(roc_auc_score(y, p)) if both else None,
            "n": int(len(y)), "positives": int(y.sum())}


def _fmt(score: float | None) -> str:
    return "n/a (one class only)" if score is None else f"{score:.3f}"


def predict(model: CascadeCfC, x: np.ndarray, dt: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[k:k + batch]), torch.from_numpy(dt[k:k + batch])).numpy())
    return np.concatenate(out)[:, 0] if out else np.zeros(0)


def train(cfg: TrainConfig, data: list[ScenarioWindows] | None = None, log=print,
          names: list[str] | None = None, recorded: list[ScenarioWindows] | None = None) -> TrainResult:
    """Train on ``data`` (default: simulate ``cfg.data``) whose feature columns are ``names``
    (default: the feature stage's). ``recorded``: labelled runs of real fleets (the testbed
    corpus's calibration runs) added to the training split only, each window weighted
    ``cfg.recorded_weight``; validation and test stay simulated."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if data is None:
        data = build_dataset(cfg.data)
    log(f"dataset: {len(data)} scenarios, {sum(len(s.label) for s in data)} windows "
        f"({time.perf_counter() - t0:.0f} s)")
    tr, va, te = split_scenarios(len(data), cfg.test_fraction, cfg.val_fraction, cfg.seed)
    pick = lambda idx: [data[i] for i in idx]  # noqa: E731
    cal = calibration_for(cfg, pick(tr), names or FeatureExtractor.names())
    x_tr, dt_tr, y_tr, _ = build_sequences(pick(tr), cfg.seq_len, cfg.drop, cfg.seed, cal)
    x_va, dt_va, y_va, _ = build_sequences(pick(va), cfg.seq_len, calibration=cal)
    x_te, dt_te, y_te, _ = build_sequences(pick(te), cfg.seq_len, calibration=cal)
    w_tr, n_rec = np.ones(len(y_tr), dtype=np.float32), 0
    if recorded:
        x_r, dt_r, y_r, _ = build_sequences(recorded, cfg.seq_len, cfg.drop, cfg.seed, cal)
        n_rec = len(y_r)
        x_tr, dt_tr = np.concatenate([x_tr, x_r]), np.concatenate([dt_tr, dt_r])
        y_tr = np.concatenate([y_tr, y_r])
        w_tr = np.concatenate([w_tr, np.full(n_rec, cfg.recorded_weight, dtype=np.float32)])
    if cfg.cascade_weight > 0:  # the model should also know a fleet that is breaking now
        x_c, dt_c, y_c, _ = build_sequences(pick(tr), cfg.seq_len, cfg.drop, cfg.seed, cal, "only")
        x_tr, dt_tr = np.concatenate([x_tr, x_c]), np.concatenate([dt_tr, dt_c])
        y_tr = np.concatenate([y_tr, y_c])
        w_tr = np.concatenate([w_tr, np.full(len(y_c), cfg.cascade_weight, dtype=np.float32)])
    flat = x_tr[:, -1, :]
    squashed = np.arcsinh(flat)  # the model's own preprocessing (models/cfc.py)
    model = CascadeCfC(x_tr.shape[2], torch.from_numpy(squashed.mean(axis=0)),
                       torch.from_numpy(squashed.std(axis=0)), cfg.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCELoss(reduction="none")
    best, best_state, rng = -1.0, None, np.random.default_rng(cfg.seed)
    for _ in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(y_tr))
        for k in range(0, len(order), cfg.batch):
            b = order[k:k + cfg.batch]
            opt.zero_grad()
            p = model(torch.from_numpy(x_tr[b]), torch.from_numpy(dt_tr[b]))[:, 0]
            loss = (loss_fn(p, torch.from_numpy(y_tr[b])) * torch.from_numpy(w_tr[b])).mean()
            loss.backward()
            opt.step()
        val = _scores(y_va, predict(model, x_va, dt_va))["pr_auc"] or 0.0
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    # the baseline: logistic regression on the same (last-window, standardised) features
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    lr = LogisticRegression(max_iter=3000, C=0.5).fit((flat - mean) / std, y_tr)
    lr_p = lr.predict_proba((x_te[:, -1, :] - mean) / std)[:, 1]
    metrics = {
        "cfc_test": _scores(y_te, predict(model, x_te, dt_te)),
        "logistic_regression_test": _scores(y_te, lr_p),
        "cfc_validation_pr_auc": best,
        "scenarios": {"train": len(tr), "validation": len(va), "test": len(te)},
        "train_windows": int(len(y_tr)), "train_positive_rate": float(y_tr.mean()),
        "recorded_runs": len(recorded or []), "recorded_windows": n_rec,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "config": asdict(cfg) | {"data": asdict(cfg.data) | {"window": asdict(cfg.data.window)}},
    }
    if cal is not None:  # the range of inputs training saw: beyond it, a verdict is out of distribution
        lo, hi = np.quantile(flat, [0.001, 0.999], axis=0)
        cal = Calibration(cal.windows, cal.names, cal.absolute, cal.floor, tuple(map(float, lo)),
                          tuple(map(float, hi)))
    log(f"CfC test PR-AUC {_fmt(metrics['cfc_test']['pr_auc'])} vs logistic regression "
        f"{_fmt(metrics['logistic_regression_test']['pr_auc'])} ({metrics['train_seconds']} s)")
    return TrainResult(model, metrics, dataset_hash(data), cal)


def calibration_for(cfg: TrainConfig, train_data: list[ScenarioWindows], names: list[str]
                    ) -> Calibration | None:
    """The per-tenant calibration the model is trained with (None: raw features); floors
    from the training scenarios' spread of each feature; absolute features among ``names``."""
    if cfg.calibration_windows <= 0:
        return None
    allf = np.concatenate([s.features for s in train_data])
    floor = np.maximum(cfg.floor_fraction * allf.std(axis=0), 1e-3)
    return Calibration(cfg.calibration_windows, tuple(names), tuple(a for a in cfg.absolute if a in names),
                       tuple(map(float, floor)))
