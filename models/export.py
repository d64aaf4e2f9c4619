"""Export the trained CfC to ONNX (opset 17, IR version 8) with its metadata file."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import torch

from models.cfc import CascadeCfC
from pipelines.topology.features import FeatureExtractor
from schemas import FEATURES_SCHEMA_VERSION

OPSET, IR_VERSION = 17, 8
INPUTS, OUTPUT = ("features", "dt"), "probability"


def export_onnx(model: CascadeCfC, seq_len: int, path: str) -> None:
    """Unrolled over ``seq_len`` steps; the batch dimension is dynamic."""
    model.eval()
    n_features = model.mean.shape[-1]
    example = (torch.zeros(2, seq_len, n_features), torch.full((2, seq_len), 10.0))
    tmp = path + ".tmp"
    torch.onnx.export(model, example, tmp, opset_version=OPSET, input_names=list(INPUTS),
                      output_names=[OUTPUT], dynamo=False,
                      dynamic_axes={"features": {0: "batch"}, "dt": {0: "batch"}, OUTPUT: {0: "batch"}})
    graph = onnx.load(tmp)
    graph.ir_version = IR_VERSION  # loadable by older runtimes
    onnx.checker.check_model(graph)
    onnx.save(graph, path)
    os.remove(tmp)


def metadata(model: CascadeCfC, seq_len: int, horizon_s: float, data_hash: str, metrics: dict,
             calibration: dict | None = None, feature_names: list[str] | None = None) -> dict:
    """``model.json``; with ``calibration`` the model's inputs are calibrated per tenant
    (``pipelines.calibration``) from the raw feature vectors named in ``feature_names``."""
    return {
        "model": "cascade_cfc", "framework": "ncps CfC (torch), exported to ONNX",
        "opset": OPSET, "ir_version": IR_VERSION, "inputs": {
            "features": {"shape": ["batch", seq_len, int(model.mean.shape[-1])], "dtype": "float32"},
            "dt": {"shape": ["batch", seq_len], "dtype": "float32",
                   "meaning": "seconds since the previous window (0 for padding)"}},
        "output": {"name": OUTPUT, "shape": ["batch", 1],
                   "meaning": f"probability that a cascade starts within {horizon_s:g} s"},
        "feature_schema_version": FEATURES_SCHEMA_VERSION,
        "feature_names": list(feature_names or FeatureExtractor.names()),
        "normalisation": {"mean": model.mean.numpy().ravel().tolist(),
                          "inv_std": model.inv_std.numpy().ravel().tolist(),
                          "note": "(asinh(features) - mean) * inv_std, inside the graph: feed raw "
                                  "feature vectors"},
        "seq_len": seq_len, "horizon_s": horizon_s, "training_data_sha256": data_hash,
        **({"calibration": calibration} if calibration else {}),
        "metrics": metrics,
    }


def write_artifact(model: CascadeCfC, seq_len: int, horizon_s: float, data_hash: str, metrics: dict,
                   out_dir: str, calibration: dict | None = None, feature_names: list[str] | None = None
                   ) -> tuple[str, str]:
    """``model.onnx`` and ``model.json`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    onnx_path, meta_path = os.path.join(out_dir, "model.onnx"), os.path.join(out_dir, "model.json")
    export_onnx(model, seq_len, onnx_path)
    with open(meta_path, "w") as fh:
        json.dump(metadata(model, seq_len, horizon_s, data_hash, metrics, calibration, feature_names), fh,
                  indent=2)
        fh.write("\n")
    return onnx_path, meta_path


def parity(model: CascadeCfC, onnx_path: str, x: np.ndarray, dt: np.ndarray) -> float:
    """Largest |torch - onnxruntime| over a batch."""
    import onnxruntime as ort

    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(dt)).numpy()
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT], {"features": x, "dt": dt})[0]
    return float(np.abs(want - got).max())
