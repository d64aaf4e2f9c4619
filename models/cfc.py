"""A closed-form continuous-time (CfC, Hasani et al. 2022) network over window features.

The ncps cell is stepped by hand with each step's real elapsed time (ncps' ``CfC`` with
``timespans`` is wrong for batch > 1), so missing or irregular windows are seen as such.
Preprocessing is part of the module, so the exported graph takes raw feature vectors:
``asinh`` (the features have heavy tails: a few windows sit 30-90 standard deviations out),
then standardisation. The head sees the cell's state, the last step's inputs and their
change since one and three steps before (the trend, which the cell alone did not pick up
from a few thousand training windows).
"""

from __future__ import annotations

import torch
from ncps.torch import CfCCell
from torch import nn

DT_SCALE_S = 10.0  # elapsed time is fed in units of one default window
LAGS = (1, 3)  # steps back for the head's change inputs


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """asinh from ops every ONNX opset has (the TorchScript exporter has no ``aten::asinh``)."""
    a = torch.abs(x)
    return torch.sign(x) * torch.log1p(a + a * a / (1.0 + torch.sqrt(1.0 + a * a)))


class CascadeCfC(nn.Module):
    """(features (B, T, F), dt seconds (B, T)) -> probability of a cascade onset (B, 1).
    ``mean`` and ``std`` are those of ``asinh(features)``; a feature constant in training
    (std under 1e-3: no information, and float error times 1/std would swamp it) is fed as 0."""

    def __init__(self, n_features: int, mean: torch.Tensor, std: torch.Tensor, hidden: int = 16,
                 backbone_units: int = 64):
        super().__init__()
        self.hidden = hidden
        self.register_buffer("mean", mean.reshape(1, 1, n_features).float())
        std = std.reshape(1, 1, n_features).float()
        self.register_buffer("inv_std", torch.where(std > 1e-3, 1.0 / std, torch.zeros_like(std)))
        self.cell = CfCCell(n_features, hidden, backbone_units=backbone_units, backbone_layers=1)
        self.head = nn.Linear(hidden + n_features * (1 + len(LAGS)), 1)

    def forward(self, features: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        z = (_asinh(features) - self.mean) * self.inv_std
        h = features.new_zeros(features.shape[0], self.hidden)
        for t in range(features.shape[1]):
            h, _ = self.cell(z[:, t], h, dt[:, t : t + 1] / DT_SCALE_S)
        last = z[:, -1]
        # k steps back; the first step where the sequence is shorter (change 0 for 1 window)
        changes = [last - torch.cat([z[:, :1].expand(-1, k, -1), z], dim=1)[:, -1 - k] for k in LAGS]
        return torch.sigmoid(self.head(torch.cat([h, last, *changes], dim=1)))
