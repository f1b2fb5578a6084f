"""Conv1d/2d/3d with a hand-written backward (seed problem 4b), and swap_convs.

The seed's layer is z = A_w y + b 1 with A_w the banded Toeplitz matrix of the filter w; 4b says
never to form A_w: the forward is a convolution and the backward is

    dJ/dy = A_w^T v                (seed 4a)  -> a transposed convolution of v with w
    dJ/dw = C_{v^T} y              (seed 4a)  -> a correlation of the input y with v
    dJ/db = v . 1                  (seed 4a)  -> a sum of v

where v = dJ/dz is the gradient arriving at the layer's output. Channels, batch, stride, padding,
dilation and groups are the multi-dimensional generalisation of the same three formulas.

Our classes SUBCLASS torch.nn.Conv{1,2,3}d, so constructor arguments, parameter names,
state_dict keys and isinstance checks are torch's; only `_conv_forward` changes: it calls
`ConvNdFunction`, whose backward is ours.

Weight-gradient choice (float32, ResNet shapes, benchmarks/conv.py): with the explicit seed
formula "correlate the input with the output gradient, the batch as channels"
(`_weight_grad_explicit`, exact) the whole layer's forward+backward took 1.2-1.7x torch's time on
2 CPU cores and 1.3-5.2x on an H200, against 0.95-1.03x with torch's dedicated backward-weights
kernel (oneDNN on CPU, cuDNN on GPU), which computes the same correlation C_{v^T} y. The default
mode "aten" therefore calls aten.convolution_backward for the weight gradient alone (what
torch.nn.grad.conv{N}d_weight calls, but given the real weight: the CPU kernel copies the
expanded placeholder that torch.nn.grad passes, a measurable cost). `weight_grad_mode("explicit")`
switches to the explicit formula; the tests check both. The input gradient is always our
transposed convolution, as fast as torch's backward-data kernel.

Memory: like torch, we save only the input (needed for dJ/dw, and saved only when dJ/dw is
needed) and the weight (a parameter, which costs no new memory).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.errors import ShapeError

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

_WEIGHT_GRAD = "aten"  # "aten" (default, fastest) or "explicit" (seed formula, batch as channels)


@contextlib.contextmanager
def weight_grad_mode(mode: str):
    """Choose how dJ/dw is computed inside the block: "aten" or "explicit" (see module doc)."""
    global _WEIGHT_GRAD
    if mode not in ("aten", "explicit"):
        raise ValueError(f"weight_grad_mode: expected 'aten' or 'explicit', got {mode!r}")
    old, _WEIGHT_GRAD = _WEIGHT_GRAD, mode
    try:
        yield
    finally:
        _WEIGHT_GRAD = old


# ----------------------------------------------------------------------------------------------
# the three gradients


def conv_input_grad(g, weight, x_shape, stride, padding, dilation, groups):
    """dJ/dx by transposed convolution. g: (B, C_out, *out), weight: (C_out, C_in/G, *k).

    seed 4a: dJ/dy_{l-1} = A_w^T v; A_w^T is the transposed convolution with the same filter.
    A strided convolution drops the last (in + 2p - d(k-1) - 1) mod s input positions; the
    transposed convolution gives them back as output_padding (always in [0, s)).
    """
    n = g.dim() - 2
    out_pad = tuple(
        x_shape[2 + i]
        - ((g.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + 1)
        for i in range(n)
    )
    return _CONV_T[n](g, weight, None, stride, padding, out_pad, groups, dilation)  # (B, C_in, *in)


def conv_weight_grad(x, weight, g, stride, padding, dilation, groups, mode=None):
    """dJ/dw, (C_out, C_in/G, *k): the correlation of the input with the output gradient.
    `weight` only gives the shape and layout of the result."""
    mode = mode or _WEIGHT_GRAD
    if mode == "explicit":
        return _weight_grad_explicit(x, weight.shape, g, stride, padding, dilation, groups)
    # seed 4a: dJ/dw = C_{v^T} y, by torch's backward-weights kernel (the same correlation,
    # fastest). As torch.nn.grad.conv{N}d_weight, but with the real weight instead of an expanded
    # placeholder, which the CPU kernel would first copy into a contiguous tensor.
    n = x.dim() - 2
    return torch.ops.aten.convolution_backward(
        g, x, weight, None, stride, padding, dilation, False, (0,) * n, groups,
        (False, True, False))[1]


def _weight_grad_explicit(x, w_shape, g, stride, padding, dilation, groups):
    """seed 4a: dJ/dw = C_{v^T} y, i.e. dw[co, ci, k] = sum_b sum_o v[b, co, o] y[b, ci, o*s + k*d]
    (y zero-padded): a convolution of y with v as the filter, the batch playing the channels
    (the conv sums over channels = over the batch), stride and dilation swapped."""
    n = x.dim() - 2
    B, C_in = x.shape[:2]
    C_out, G = g.shape[1], groups
    sp = tuple(range(3, 3 + n))
    # input: (C_in/G, G*B, *in), channel j*B + b = sample b of group j
    xi = x.reshape(B, G, C_in // G, *x.shape[2:]).permute(2, 1, 0, *sp)
    xi = xi.reshape(C_in // G, G * B, *x.shape[2:])
    # filter: (C_out, B, *out), out channel j*(C_out/G) + co, in channel b
    gf = g.reshape(B, G, C_out // G, *g.shape[2:]).permute(1, 2, 0, *sp)
    gf = gf.reshape(C_out, B, *g.shape[2:])
    r = _CONV[n](xi, gf, None, dilation, padding, stride, G)  # (C_in/G, C_out, *k')  k' >= k
    r = r.transpose(0, 1)  # (C_out, C_in/G, *k')
    return r[(...,) + tuple(slice(0, k) for k in w_shape[2:])].contiguous()


def conv_bias_grad(g):
    """seed 4a: dJ/db = v . 1, summed over the batch and the positions. g: (B, C_out, *out)."""
    return g.sum(dim=[0, *range(2, g.dim())])  # (C_out,)


class ConvNdFunction(torch.autograd.Function):
    """y = conv(x, w) + b for 1, 2 or 3 spatial dims (zero padding, symmetric), with the seed's
    backward (4a/4b). x: (B, C_in, *in), w: (C_out, C_in/G, *k), b: (C_out,) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        n = x.dim() - 2
        # save only the input (for dJ/dw, and only if it is needed) and the weight (a parameter:
        # no new memory), as torch does
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.x_shape = x.shape
        # seed 4b: z = A_w y + b 1 computed as a convolution, A_w never formed
        return _CONV[n](x, weight, bias, stride, padding, dilation, groups)  # (B, C_out, *out)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:
            gx = conv_input_grad(g, weight, ctx.x_shape, stride, padding, dilation, groups)
        if need_w:
            gw = conv_weight_grad(x, weight, g, stride, padding, dilation, groups)
        if need_b:
            gb = conv_bias_grad(g)
        return gx, gw, gb, None, None, None, None


# ----------------------------------------------------------------------------------------------
# the modules


def _fmt(t) -> str:
    """(3, 3) -> '3'; (3, 5) -> '(3, 5)'."""
    t = tuple(t)
    return str(t[0]) if len(set(t)) == 1 else str(t)


class _OurConvMixin:
    """Shared by Conv1d/2d/3d: `_conv_forward` through ConvNdFunction, with shape checks."""

    _dnnlab_name: str | None = None  # module path, set by swap_convs (e.g. "layer1.0.conv1")
    _n: int  # spatial dims

    def _describe(self) -> str:
        desc = f"{type(self).__name__}({self.in_channels}, {self.out_channels}, k={_fmt(self.kernel_size)})"
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
            y = ConvNdFunction.apply(x, weight, bias, self.stride, pad, self.dilation, self.groups)
        else:  # nothing to differentiate: skip the Function's overhead
            y = _CONV[n](x, weight, bias, self.stride, pad, self.dilation, self.groups)
        return y if input.dim() == n + 2 else y[0]


class Conv1d(_OurConvMixin, nn.Conv1d):
    """torch.nn.Conv1d with the seed's hand-written backward (ConvNdFunction)."""

    _n = 1


class Conv2d(_OurConvMixin, nn.Conv2d):
    """torch.nn.Conv2d with the seed's hand-written backward (ConvNdFunction)."""

    _n = 2


class Conv3d(_OurConvMixin, nn.Conv3d):
    """torch.nn.Conv3d with the seed's hand-written backward (ConvNdFunction)."""

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
