"""torch.nn.Conv1d/2d/3d whose backward is dnnlab's (docs/math.md (3b)), and `swap_convs`.

Our classes SUBCLASS torch.nn.Conv{1,2,3}d, so constructor arguments, parameter names,
state_dict keys and isinstance checks are torch's; only `_conv_forward` changes: it calls
`dnnlab.conv.function.ConvNdFunction`, whose backward is the transposed convolution and
correlation of docs/math.md (3a)/(3b). `swap_convs(model)` turns a model's torch convolutions
into ours in place. Wrong input shapes raise ShapeError naming the module path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.conv.function import CONV, apply_conv
from dnnlab.core.errors import ShapeError


def _fmt(t) -> str:
    """(3, 3) -> '3'; (3, 5) -> '(3, 5)'."""
    t = tuple(t)
    return str(t[0]) if len(set(t)) == 1 else str(t)


class _OurConvMixin:
    """Shared by Conv1d/2d/3d: `_conv_forward` through ConvNdFunction, with shape checks."""

    _dnnlab_name: str | None = None  # module path, set by swap_convs (e.g. "layer1.0.conv1")
    _n: int  # spatial dims

    def _describe(self) -> str:
        desc = (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"k={_fmt(self.kernel_size)})")
        return f"{self._dnnlab_name} {desc}" if self._dnnlab_name else desc

    def _pads(self):
        """Per spatial dim (left, right) zero or mode padding, as torch applies it."""
        if self.padding == "valid":
            return [(0, 0)] * self._n
        if self.padding == "same":
            tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return [(t // 2, t - t // 2) for t in tot]
        return [(p, p) for p in self.padding]

    def _check(self, x, pads):
        n = self._n
        if x.dim() not in (n + 1, n + 2):
            raise ShapeError(f"{self._describe()}: input has shape {tuple(x.shape)}, expected "
                             f"(B, {self.in_channels}, {n}-d) or unbatched")
        c = x.shape[-n - 1]
        if c != self.in_channels:
            raise ShapeError(f"{self._describe()}: input has {c} channels, "
                             f"expected {self.in_channels}")
        padded = [s + l + r for s, (l, r) in zip(x.shape[-n:], pads)]
        dilated = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)]
        if any(k > p for k, p in zip(dilated, padded)):
            raise ShapeError(f"{self._describe()}: kernel {_fmt(self.kernel_size)} (dilated "
                             f"{_fmt(dilated)}) > padded input {_fmt(padded)}")

    def _conv_forward(self, input, weight, bias):
        if torch.jit.is_tracing():  # op counters trace the graph: show torch's own conv op
            return super()._conv_forward(input, weight, bias)
        pads = self._pads()
        self._check(input, pads)
        n = self._n
        x = input if input.dim() == n + 2 else input[None]  # (B, C_in, *in)
        if self.padding_mode != "zeros":
            # as torch: pad with the mode first, then a convolution without padding
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            pad = (0,) * n
        else:
            pad = tuple(l for l, _ in pads)
            extra = [r - l for l, r in pads]
            if any(extra):  # 'same' with an even dilated kernel: one more zero on the right
                x = F.pad(x, [p for e in reversed(extra) for p in (0, e)])
        grad = torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
        if grad:
            y = apply_conv(x, weight, bias, self.stride, pad, self.dilation, self.groups)
        else:  # nothing to differentiate: skip the Function's overhead
            y = CONV[n](x, weight, bias, self.stride, pad, self.dilation, self.groups)
        return y if input.dim() == n + 2 else y[0]


class Conv1d(_OurConvMixin, nn.Conv1d):
    """torch.nn.Conv1d with dnnlab's hand-written backward (ConvNdFunction)."""

    _n = 1


class Conv2d(_OurConvMixin, nn.Conv2d):
    """torch.nn.Conv2d with dnnlab's hand-written backward (ConvNdFunction)."""

    _n = 2


class Conv3d(_OurConvMixin, nn.Conv3d):
    """torch.nn.Conv3d with dnnlab's hand-written backward (ConvNdFunction)."""

    _n = 3


_SWAP = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}


def swap_convs(model: nn.Module) -> nn.Module:
    """Turn every torch.nn.Conv1d/2d/3d of `model` (exact type; not ConvTranspose, not
    subclasses) into ours, in place, and return the model.

    The swap changes each module's class only: the module objects, their parameters (the same
    tensors, so optimizers keep working), buffers, hooks and state_dict keys stay as they were.
    Each of our convs learns its module path (`_dnnlab_name`) for error messages.
    """
    for name, m in model.named_modules():
        cls = _SWAP.get(type(m))
        if cls is not None:
            m.__class__ = cls
        if isinstance(m, _OurConvMixin):
            m._dnnlab_name = name or None  # the root has no path
    return model


OUR_CONVS = (Conv1d, Conv2d, Conv3d)
