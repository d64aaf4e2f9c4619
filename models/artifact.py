"""The committed model artifact: train -> checkpoint -> ONNX + metadata (+ Triton copy).

``aura train`` writes the checkpoint (weights, normalisation, metrics, data hash) and
exports it; ``aura export`` re-exports the committed checkpoint, reproducing the ONNX file
and metadata without retraining.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from models.cfc import CascadeCfC
from models.export import write_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "models", "cascade_cfc")
TRITON_MODEL_DIR = os.path.join(ROOT, "triton_repo", "cascade_cfc", "1")


def save_checkpoint(path: str, model: CascadeCfC, seq_len: int, horizon_s: float, data_hash: str,
                    metrics: dict, calibration: dict | None = None,
                    feature_names: list[str] | None = None) -> None:
    """``calibration``: the model's per-tenant input calibration (``Calibration.to_dict``);
    ``feature_names``: the features it reads, when not all of the feature stage's."""
    torch.save({"state_dict": model.state_dict(), "n_features": int(model.mean.shape[-1]),
                "hidden": model.hidden, "seq_len": seq_len, "horizon_s": horizon_s,
                "data_hash": data_hash, "metrics": metrics, "calibration": calibration,
                "feature_names": feature_names}, path)


def export_checkpoint(checkpoint: str, out_dir: str, triton_dir: str | None = None) -> tuple[str, str]:
    """Checkpoint -> ``model.onnx`` + ``model.json`` in ``out_dir`` (and the ONNX file in
    ``triton_dir``, the Triton repository's version folder)."""
    ck = torch.load(checkpoint, weights_only=False)
    n = ck["n_features"]
    model = CascadeCfC(n, torch.zeros(n), torch.ones(n), ck["hidden"])
    model.load_state_dict(ck["state_dict"])
    onnx_path, meta_path = write_artifact(model, ck["seq_len"], ck["horizon_s"], ck["data_hash"],
                                          ck["metrics"], out_dir, ck.get("calibration"),
                                          ck.get("feature_names"))
    if triton_dir:
        os.makedirs(triton_dir, exist_ok=True)
        shutil.copyfile(onnx_path, os.path.join(triton_dir, "model.onnx"))
    return onnx_path, meta_path


def write_metrics(metrics: dict, out_dir: str) -> str:
    path = os.path.join(out_dir, "metrics.json")
    with open(path, "w") as fh:
        json.dump(metrics, fh, indent=2)
        fh.write("\n")
    return path
