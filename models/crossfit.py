"""The operating threshold for a model trained with recorded fleet runs, without scoring
any run the model was trained on: cross-fitting over the runs.

The calibration runs are split into ``folds`` by run; for each fold a model is trained on
the simulated scenarios plus the other folds' runs and scores the fold's runs as the
stream would (calibrated, statuses honoured). The threshold is then chosen on those
out-of-fold scores (at most ``budget`` false alarms per quiet fleet-hour), and the final
model - trained on every calibration run - ships with it.
"""

from __future__ import annotations

import tempfile

import numpy as np

from models.train import TrainConfig, train
from pipelines.backtest.ablation import to_training
from pipelines.backtest.fleet_scoring import score_fleets, threshold_for_quiet_budget
from pipelines.backtest.scoring import ScenarioWindows
from pipelines.inference import OnnxPredictor, score_tenant


def out_of_fold(cfg: TrainConfig, sim: list, runs: list[ScenarioWindows], windows: dict, folds: int,
                log=print) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per run (in order): out-of-fold scores (0 where the verdict is not ok) and the
    windows with an ok verdict."""
    from models.export import write_artifact

    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k in range(folds):
        held = [r for i, r in enumerate(runs) if i % folds == k]
        rest = [r for i, r in enumerate(runs) if i % folds != k]
        res = train(cfg, sim, log=lambda *a: None, recorded=to_training(rest))
        with tempfile.TemporaryDirectory(prefix="aura-crossfit-") as d:
            write_artifact(res.model, cfg.seq_len, cfg.data.horizon_s, res.data_hash, res.metrics, d,
                           res.calibration.to_dict() if res.calibration else None)
            pred = OnnxPredictor(d)
            pred.load_model()
            for r in held:
                starts, ends, feats = windows[r.tenant]
                p, statuses = score_tenant(pred, starts, ends, feats)
                ok = np.array(statuses) == "ok"
                scores[r.tenant] = (np.where(ok, p, 0.0), ok)
        log(f"cross-fit fold {k + 1}/{folds}: {len(held)} runs held out")
    return [scores[r.tenant][0] for r in runs], [scores[r.tenant][1] for r in runs]


def operating_threshold(cfg: TrainConfig, sim: list, runs: list[ScenarioWindows], windows: dict,
                        folds: int = 3, budget: float = 1.0, log=print) -> dict:
    """The cross-fitted operating threshold and what it gives on the out-of-fold scores."""
    if len(runs) < folds:
        raise ValueError(f"{len(runs)} recorded runs cannot make {folds} folds")
    scores, trusted = out_of_fold(cfg, sim, runs, windows, folds, log)
    thr = threshold_for_quiet_budget(runs, scores, budget, trusted=trusted)
    return {"threshold": thr, "budget_per_quiet_hour": budget, "folds": folds, "runs": len(runs),
            "out_of_fold": score_fleets(runs, scores, thr, trusted=trusted)}
