"""A tiny calibrated model artifact for tests: an untrained CascadeCfC exported to ONNX whose
``model.json`` carries a ``calibration`` entry (``pipelines.calibration.Calibration``)."""

from __future__ import annotations

from pipelines.calibration import Calibration
from pipelines.topology.features import FeatureExtractor

WINDOWS = 3  # baseline windows: a tenant's first three verdicts are "calibrating"
ABSOLUTE = ("unhealthy_frac", "error_rate_p90")  # kept as they are beside the relative features
SEQ_LEN = 8


def tiny_calibration() -> Calibration:
    """The calibration the test artifact carries (no input range: never out of distribution)."""
    names = tuple(FeatureExtractor.names())
    return Calibration(WINDOWS, names, ABSOLUTE, (1.0,) * len(names))


def write_calibrated_model(out_dir: str, calibration: Calibration | None = None, seed: int = 0) -> str:
    """``model.onnx`` + ``model.json`` in ``out_dir``: input shape (batch, 8, n_inputs)."""
    import torch

    from models.cfc import CascadeCfC
    from models.export import write_artifact

    cal = calibration or tiny_calibration()
    n = cal.n_inputs
    torch.manual_seed(seed)
    model = CascadeCfC(n, torch.zeros(n), torch.ones(n), hidden=4, backbone_units=8)
    write_artifact(model, SEQ_LEN, 60.0, "test", {}, out_dir, calibration=cal.to_dict())
    return out_dir
