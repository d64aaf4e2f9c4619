"""The LNN-without-topology ablation: the committed model's training recipe
(``models.train.train``, same scenarios, split and hyper-parameters) on the non-topology
features only, exported to ONNX and cached under the backtest's output directory, keyed by
a hash of its training data, configuration and the model's code. torch is imported only to train it; scoring
runs on onnxruntime like the pipeline."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from pipelines.backtest.code_hash import code_hash
from pipelines.backtest.scoring import ScenarioWindows
from pipelines.training_data import ScenarioWindows as TrainingWindows

# the model and its training code: a change retrains the ablation
MODEL_CODE = ("models/cfc.py", "models/train.py", "models/sequences.py")


def to_training(data: list[ScenarioWindows], cols: np.ndarray | None = None) -> list[TrainingWindows]:
    """Backtest windows as ``models.train`` takes them (optionally a subset of the features)."""
    out = []
    for s in data:
        ends = s.window_end
        tto = np.full(len(ends), np.inf)
        for i, e in enumerate(ends):
            ahead = s.onsets[s.onsets > e] - e
            if len(ahead):
                tto[i] = ahead.min()
        out.append(TrainingWindows(s.tenant, s.graph, s.n_agents, (),
                                   s.features if cols is None else s.features[:, cols],
                                   ends, s.label, s.in_cascade, tto))
    return out


def train_without_topology(fit: list[ScenarioWindows], cols: np.ndarray, train_config: dict, cache_dir: str,
                           log=print) -> str:
    """Model directory (model.onnx + model.json) of the ablation, trained once per key."""
    from pipelines.training_data import dataset_hash

    data = to_training(fit, cols)
    cfg = {k: v for k, v in train_config.items() if k != "data"}
    key = hashlib.sha256((dataset_hash(data) + json.dumps(cfg, sort_keys=True)
                          + code_hash(*MODEL_CODE)).encode()).hexdigest()[:16]
    model_dir = os.path.join(cache_dir, f"cfc_no_topology-{key}")
    if os.path.exists(os.path.join(model_dir, "model.onnx")):
        log(f"ablation: cached CfC without topology features ({model_dir})")
        return model_dir
    import torch

    from models.export import write_artifact
    from models.train import TrainConfig, train

    torch.set_num_threads(1)
    known = set(TrainConfig.__dataclass_fields__) - {"data"}
    tc = TrainConfig(**{k: v for k, v in cfg.items() if k in known})
    log(f"ablation: training a CfC on {len(cols)} non-topology features ({len(data)} scenarios, "
        f"{tc.epochs} epochs)")
    from pipelines.backtest.baselines import NAMES

    names = [NAMES[i] for i in cols]
    res = train(tc, data=data, log=log, names=names)
    horizon = float(train_config.get("data", {}).get("horizon_s", 60.0))
    tmp = model_dir + ".tmp"
    write_artifact(res.model, tc.seq_len, horizon, res.data_hash, res.metrics, tmp,
                   res.calibration.to_dict() if res.calibration else None)
    meta_path = os.path.join(tmp, "model.json")
    with open(meta_path) as fh:
        meta = json.load(fh)
    meta["feature_names"] = names
    meta["model"] = "cascade_cfc_no_topology"
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=2)
    os.replace(tmp, model_dir)
    return model_dir
