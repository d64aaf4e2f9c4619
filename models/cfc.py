"""A closed-form continuous-time (CfC, Hasani et al. 2022) network over window features.

The ncps cell is stepped by hand with each step's real elapsed time (ncps' ``CfC`` with
``timespans`` is wrong for batch > 1), so missing or irregular windows are seen as such.
Normalisation is part of the module, so the exported graph takes raw feature vectors.
"""

from __future__ import annotations

import torch
from ncps.torch import CfCCell
from torch import nn

DT_SCALE_S = 10.0  # elapsed time is fed in units of one default window


class CascadeCfC(nn.Module):
    """(features (B, T, F), dt seconds (B, T)) -> probability of a cascade onset (B, 1)."""

    def __init__(self, n_features: int, mean: torch.Tensor, std: torch.Tensor, hidden: int = 32,
                 backbone_units: int = 64):
        super().__init__()
        self.hidden = hidden
        self.register_buffer("mean", mean.reshape(1, n_features).float())
        self.register_buffer("std", std.reshape(1, n_features).float())
        self.cell = CfCCell(n_features, hidden, backbone_units=backbone_units, backbone_layers=1)
        self.head = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        h = features.new_zeros(features.shape[0], self.hidden)
        for t in range(features.shape[1]):
            x = (features[:, t] - self.mean) / self.std
            h, _ = self.cell(x, h, dt[:, t : t + 1] / DT_SCALE_S)
        return torch.sigmoid(self.head(h))
