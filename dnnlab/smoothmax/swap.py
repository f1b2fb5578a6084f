"""`swap_pools`: a network's torch max pooling as smooth-max pooling (docs/smoothmax.md).

nn.MaxPool2d(k, s, p, d, ceil_mode=c) becomes SmoothMaxPool2d(beta, k, s, p, d,
ceil_mode=c): at beta = inf with ties="first" it is F.max_pool2d itself, bit for
bit; at finite beta each window's nu_beta (docs/math.md (1a)). nn.AdaptiveMaxPool2d becomes
SmoothAdaptiveMaxPool2d, whose windows tile the input: an output size that divides it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.smoothmax.modules import SmoothMaxPool2d

__all__ = ["SmoothAdaptiveMaxPool2d", "swap_pools"]


class SmoothAdaptiveMaxPool2d(SmoothMaxPool2d):
    """nn.AdaptiveMaxPool2d(output_size) as smooth-max pooling: (B, C, H, W) ->
    (B, C, oh, ow) through windows of (H/oh, W/ow), which must be whole numbers (a None entry
    keeps that size); (1, 1) is global pooling. At beta = inf with ties="first" it is
    F.adaptive_max_pool2d itself."""

    def __init__(self, beta, output_size, return_indices: bool = False, *,
                 normalized: bool = False, learnable: bool = False, ties: str = "shared"):
        # nn.AdaptiveMaxPool2d's signature after beta; the rest keyword-only
        super().__init__(beta, None, None, return_indices=return_indices,
                         normalized=normalized, learnable=learnable, ties=ties)
        self.output_size = (output_size, output_size) if isinstance(output_size, int) or \
            output_size is None else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ShapeError(f"{self._name()}: expected a (B, C, H, W) input, got "
                             f"{tuple(x.shape)}")
        b = self.beta
        if self.ties == "first" and not isinstance(b, torch.Tensor) and math.isinf(b):
            return F.adaptive_max_pool2d(x, self.output_size)  # torch's, bit for bit
        size = x.shape[-2:]
        out = [n if o is None else o for o, n in zip(self.output_size, size)]
        if any(o <= 0 or n % o for o, n in zip(out, size)):
            raise ShapeError(f"{self._name()}: output size {tuple(out)} does not divide the "
                             f"input's {tuple(size)} (only whole windows are supported)")
        if out == [1, 1]:
            self.kernel_size = self.stride = None  # global pooling
        else:
            self.kernel_size = self.stride = (size[0] // out[0], size[1] // out[1])
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, " + super().extra_repr()


def swap_pools(model: nn.Module, beta, normalized: bool = False, learnable: bool = False,
               ties: str = "shared") -> nn.Module:
    """Replace every nn.MaxPool2d and nn.AdaptiveMaxPool2d of `model` (exact type) by
    smooth-max pooling with `beta`, in place, and return the model.

    MaxPool2d's kernel_size, stride, padding, dilation and ceil_mode are kept. Each new layer
    learns its module path (`_dnnlab_name`) for error messages, is put on the old one's
    training mode, and (learnable=True) gets its own beta parameter: build the optimizer
    after the swap. A pooling with return_indices=True raises ConfigError naming its path
    (smooth max has no indices). At beta = inf with ties="first" the network computes what it
    computed before, bit for bit.
    """
    found = []
    # every path of a module registered at several (nn.Sequential(pool, conv, pool),
    # self.p2 = self.p1): each is replaced, by one new module (still shared)
    for name, m in model.named_modules(remove_duplicate=False):
        if type(m) in (nn.MaxPool2d, nn.AdaptiveMaxPool2d):
            if m.return_indices:
                raise ConfigError(f"swap_pools: {name} ({type(m).__name__}) has "
                                  "return_indices=True; smooth-max pooling has no indices")
            if not name:
                raise ConfigError(f"swap_pools: the model itself is a {type(m).__name__}; "
                                  "build SmoothMaxPool2d directly")
            found.append((name, m))
    made: dict[int, nn.Module] = {}
    for name, m in found:
        new = made.get(id(m))
        if new is None:
            if type(m) is nn.MaxPool2d:
                new = SmoothMaxPool2d(beta, m.kernel_size, m.stride, m.padding, m.dilation,
                                      ceil_mode=m.ceil_mode, normalized=normalized,
                                      learnable=learnable, ties=ties)
            else:
                new = SmoothAdaptiveMaxPool2d(beta, m.output_size, normalized=normalized,
                                              learnable=learnable, ties=ties)
            new._dnnlab_name = name or None
            new.train(m.training)
            made[id(m)] = new
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
    return model
