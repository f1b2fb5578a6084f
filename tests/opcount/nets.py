"""Small networks the opcount tests build through a config (`model.builder._target_`)."""
from __future__ import annotations

import torch
from torch import nn


class _Gate(nn.Module):
    """Refuses a batch of more than one sample with a ValueError (a model's own check)."""

    def forward(self, x):
        if x.shape[0] > 1:
            raise ValueError("this gate takes one sample at a time")
        return x


class ValueErrorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gate = _Gate()

    def forward(self, x):  # (B, 4)
        return self.gate(torch.relu(self.fc(x)))


def value_error_net(name: str | None = None) -> nn.Module:
    return ValueErrorNet()
