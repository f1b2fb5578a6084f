"""The convolution with a hand-written backward (docs/math.md (3b)): `ConvNdFunction`.

A layer of the chain is z = A_w y + b 1 with A_w the banded Toeplitz matrix of the filter w; (3b)
says never to form A_w: the forward is a convolution and the backward is

    dJ/dy = A_w^T v        (docs/math.md (3a))  -> a transposed convolution of v with w
    dJ/dw = C_{v^T} y      (docs/math.md (3a))  -> a correlation of the input y with v
    dJ/db = v . 1          (docs/math.md (3a))  -> a sum of v

where v = dJ/dz is the gradient arriving at the layer's output. Channels, batch, stride, padding,
dilation and groups are the multi-dimensional generalisation of the same three formulas.
The modules that use it are in dnnlab/conv/modules.py.

Weight-gradient choice: the explicit formula of (3a) "correlate the input with the output gradient,
the batch as channels" (`_weight_grad_explicit`, exact) is slower than torch's dedicated
backward-weights kernel (oneDNN on CPU, cuDNN on GPU), which computes the same correlation C_{v^T}
y (benchmarks/conv.py measures both). The default mode "aten" therefore calls
aten.convolution_backward for the weight gradient alone (what torch.nn.grad.conv{N}d_weight calls,
but given the real weight: the CPU kernel copies the expanded placeholder that torch.nn.grad
passes, a measurable cost). `weight_grad_mode("explicit")` switches to the explicit formula; the
tests check both. The input gradient is always our transposed convolution, as fast as torch's
backward-data kernel.

Memory: like torch, we save only the input (needed for dJ/dw, and saved only when dJ/dw is
needed) and the weight (a parameter, which costs no new memory).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from dnnlab.core import amp

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

_WEIGHT_GRAD = "aten"  # "aten" (default, fastest) or "explicit" ((3a) written out)


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

    docs/math.md (3a): dJ/dy_{l-1} = A_w^T v; A_w^T is the transposed convolution with the same
    filter.
    A strided convolution drops the last (in + 2p - d(k-1) - 1) mod s input positions; the
    transposed convolution gives them back as output_padding (always in [0, s)).
    """
    n = g.dim() - 2
    out_pad = tuple(
        x_shape[2 + i]
        - ((g.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
           + dilation[i] * (weight.shape[2 + i] - 1) + 1)
        for i in range(n)
    )
    return _CONV_T[n](g, weight, None, stride, padding, out_pad, groups, dilation)  # (B, C_in, *in)


def conv_weight_grad(x, weight, g, stride, padding, dilation, groups, mode=None):
    """dJ/dw, (C_out, C_in/G, *k): the correlation of the input with the output gradient.
    `weight` only gives the shape and layout of the result."""
    mode = mode or _WEIGHT_GRAD
    if mode == "explicit":
        return _weight_grad_explicit(x, weight.shape, g, stride, padding, dilation, groups)
    # docs/math.md (3a): dJ/dw = C_{v^T} y, by torch's backward-weights kernel (the same correlation
    # fastest). As torch.nn.grad.conv{N}d_weight, but with the real weight instead of an expanded
    # placeholder, which the CPU kernel would first copy into a contiguous tensor.
    n = x.dim() - 2
    return torch.ops.aten.convolution_backward(
        g, x, weight, None, stride, padding, dilation, False, (0,) * n, groups,
        (False, True, False))[1]


def _weight_grad_explicit(x, w_shape, g, stride, padding, dilation, groups):
    """docs/math.md (3a): dJ/dw = C_{v^T} y, i.e.
    dw[co, ci, k] = sum_b sum_o v[b, co, o] y[b, ci, o*s + k*d]
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
    r = CONV[n](xi, gf, None, dilation, padding, stride, G)  # (C_in/G, C_out, *k')  k' >= k
    r = r.transpose(0, 1)  # (C_out, C_in/G, *k')
    return r[(...,) + tuple(slice(0, k) for k in w_shape[2:])].contiguous()


def conv_bias_grad(g):
    """docs/math.md (3a): dJ/db = v . 1, summed over the batch and the positions.
    g: (B, C_out, *out)."""
    return g.sum(dim=[0, *range(2, g.dim())])  # (C_out,)


class ConvNdFunction(torch.autograd.Function):
    """y = conv(x, w) + b for 1, 2 or 3 spatial dims (zero padding, symmetric), with the
    backward of docs/math.md (3a)/(3b).
    x: (B, C_in, *in), w: (C_out, C_in/G, *k), b: (C_out,) or None."""

    generate_vmap_rule = True  # torch.func.vmap: forward, backward and jvp are plain ops

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        n = x.dim() - 2
        # docs/math.md (3b): z = A_w y + b 1 computed as a convolution, A_w never formed
        return CONV[n](x, weight, bias, stride, padding, dilation, groups)  # (B, C_out, *out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups = inputs
        # save only the input (for dJ/dw, and only if it is needed) and the weight (a parameter:
        # no new memory), as torch does
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.save_for_forward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.x_shape = x.shape

    @staticmethod
    def jvp(ctx, tx, tw, tb, *_):
        """d z = conv(tx, w) + conv(x, tw) + tb (broadcast): the conv is bilinear in (x, w)."""
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        conv = CONV[x.dim() - 2]
        t = None
        if tx is not None:
            t = conv(tx, weight, None, stride, padding, dilation, groups)
        if tw is not None:
            tz = conv(x, tw, None, stride, padding, dilation, groups)
            t = tz if t is None else t + tz
        if tb is not None:
            tb = tb.view(1, -1, *([1] * (x.dim() - 2)))
            t = tb.expand(x.shape[0], -1, *([1] * (x.dim() - 2))) if t is None else t + tb
        return t

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        if weight.dtype != g.dtype:  # under autocast: one compute dtype, as torch's conv does
            weight, x = weight.to(g.dtype), x if x is None else x.to(g.dtype)
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


apply_conv = amp.applier(ConvNdFunction)  # ConvNdFunction.apply; without its jvp under compile
