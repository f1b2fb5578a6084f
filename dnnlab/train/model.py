"""The network the training experiments study: dnnlab's Conv2d and SmoothMaxPool2d in a small
CNN (conf/model/smoothmax_cnn.yaml)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from dnnlab.conv.modules import Conv2d
from dnnlab.core.beta import parse_beta
from dnnlab.core.errors import ConfigError, require
from dnnlab.smoothmax.modules import SmoothMaxPool2d


class SmoothMaxCNN(torch.nn.Module):
    """A small CNN of dnnlab layers: Conv2d (hand-written backprop, docs/math.md (3b)) and
    SmoothMaxPool2d with temperature beta (docs/math.md (1a)-(1c)): beta -> inf is max pooling,
    small beta is average-like.

    (B, C, H, W) -> conv3x3 -> ReLU -> conv3x3 -> ReLU -> smooth-max pool 2x2 -> (B, c2, H/2, W/2)
    -> conv3x3 -> ReLU -> global smooth-max pool -> (B, c3) -> Linear -> (B, num_classes)
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 channels: Sequence[int] = (32, 64, 64), beta: float | str = 4.0,
                 learnable: bool = False, normalized: bool = False,
                 ties: str = "shared") -> None:
        super().__init__()
        beta = parse_beta(beta, "model.pool.beta")
        require(ties in ("shared", "first"), "model.pool.ties", ties, "expected shared or first")
        pool = SmoothMaxPool2d
        if len(channels) != 3:
            raise ConfigError(f"model.builder.channels: expected 3 sizes, got {list(channels)}")
        c1, c2, c3 = [int(c) for c in channels]
        self.features = torch.nn.Sequential(
            Conv2d(in_channels, c1, 3, padding=1), torch.nn.ReLU(),
            Conv2d(c1, c2, 3, padding=1), torch.nn.ReLU(),
            pool(beta, kernel_size=2, learnable=learnable, normalized=normalized, ties=ties),
            Conv2d(c2, c3, 3, padding=1), torch.nn.ReLU(),
            pool(beta, learnable=learnable, normalized=normalized, ties=ties),  # global
        )
        self.head = torch.nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self.head(self.features(x).flatten(1))  # (B, num_classes)
