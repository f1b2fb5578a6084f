"""Hand-written gradients of dnnlab's layers against autograd references, on live data.

For a dnnlab Conv (seed 4b: input gradient by transposed convolution, weight gradient by
correlation) the reference is torch's own convolution through autograd; for SmoothMaxPool2d
(seed 1c: gradient softmax(beta x)) it is torch.logsumexp(beta x)/beta through autograd
(amax at beta = inf). Both get the same input and the same upstream gradient.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.nn import SmoothMaxPool2d
from dnnlab.nn.conv import Conv1d, Conv2d, Conv3d

OUR_CONVS = (Conv1d, Conv2d, Conv3d)


def errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max abs reference)."""
    diff = (ours.double() - ref.double()).abs().max().item() if ours.numel() else 0.0
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    return diff, diff / scale if scale > 0 else diff


def _torch_conv_class(m: nn.Module) -> type:
    return next(c for c in type(m).__mro__ if c.__module__.startswith("torch.nn"))


def conv_check(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    """Gradients of input, weight, bias: our Function vs torch's conv, same x and upstream g."""
    params = [m.weight] + ([m.bias] if m.bias is not None else [])
    xa = x.detach().requires_grad_(True)
    ours = torch.autograd.grad(m(xa), [xa] + params, g)
    xb = x.detach().requires_grad_(True)
    ref_out = _torch_conv_class(m)._conv_forward(m, xb, m.weight, m.bias)
    ref = torch.autograd.grad(ref_out, [xb] + params, g)
    names = ["input", "weight", "bias"][:len(ref)]
    return {n: errors(o, r) for n, o, r in zip(names, ours, ref)}


def smooth_max_reference(windows: torch.Tensor, beta, dims=(-2, -1), normalized=False):
    """torch.logsumexp(beta x)/beta over `dims` (amax at beta = inf), through autograd."""
    if isinstance(beta, torch.Tensor):
        if bool(torch.isinf(beta).any()):
            return windows.amax(dims)
        out = torch.logsumexp(beta * windows, dims) / beta.squeeze(-1).squeeze(-1)
    else:
        if math.isinf(beta):
            return windows.amax(dims)
        out = torch.logsumexp(beta * windows, dims) / beta
    if normalized:
        n = math.prod(windows.shape[d] for d in dims)
        out = out - math.log(n) / (beta if not isinstance(beta, torch.Tensor) else
                                   beta.squeeze(-1).squeeze(-1))
    return out


def _windows(m: SmoothMaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H_out, W_out, kh, kw) windows of x (global: (B, C, 1, 1, H, W))."""
    if m.kernel_size is None:
        return x[:, :, None, None]
    (kh, kw), (sh, sw) = m.kernel_size, m.stride
    return x.unfold(2, kh, sh).unfold(3, kw, sw)


def _beta_for(m: SmoothMaxPool2d, c: int):
    b = m.beta
    if isinstance(b, torch.Tensor):
        b = b.detach()
        if b.numel() > 1:
            return b.view(1, c, 1, 1, 1, 1)
        b = float(b)
    return b


def pool_check(m: SmoothMaxPool2d, x: torch.Tensor, g: torch.Tensor) -> dict:
    xa = x.detach().requires_grad_(True)
    (ours,) = torch.autograd.grad(m(xa), [xa], g)
    xb = x.detach().requires_grad_(True)
    beta = _beta_for(m, x.shape[1])
    if getattr(m, "ties", "shared") == "first" and not isinstance(beta, torch.Tensor) and \
            math.isinf(beta):  # torch's max pooling is the layer itself here
        ref_out = F.adaptive_max_pool2d(xb, 1) if m.kernel_size is None else F.max_pool2d(
            xb, m.kernel_size, m.stride)
    else:
        ref_out = smooth_max_reference(_windows(m, xb), beta, normalized=m.normalized)
    (ref,) = torch.autograd.grad(ref_out.reshape(g.shape), [xb], g)
    return {"input": errors(ours, ref)}


@torch.no_grad()
def pool_stats(m: SmoothMaxPool2d, x: torch.Tensor) -> dict:
    """Entropy of softmax(beta x) per window (mean) and its mass on the argmax (1 at inf)."""
    w = _windows(m, x).flatten(-2).double()  # (B, C, Ho, Wo, n)
    beta = _beta_for(m, x.shape[1])
    if isinstance(beta, torch.Tensor):
        beta = beta.double().view(1, -1, 1, 1, 1)
    if not isinstance(beta, torch.Tensor) and math.isinf(beta):
        top = (w == w.amax(-1, keepdim=True)).double()
        if getattr(m, "ties", "shared") == "first":  # max pooling: one argmax per window
            top = torch.zeros_like(w).scatter_(-1, w.argmax(-1, keepdim=True), 1.0)
        p = top / top.sum(-1, keepdim=True)  # ties shared: the limit of softmax (seed 1c)
    else:
        p = torch.softmax(beta * w, dim=-1)  # seed 1c: grad nu_beta = softmax(beta x)
    ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
    n = w.shape[-1]
    return {"entropy": ent.mean().item(), "entropy_max": math.log(n),
            "argmax_mass": p.amax(-1).mean().item()}


class Capture:
    """Forward hooks that keep each dnnlab layer's input and (after backward) output gradient."""

    def __init__(self, model: nn.Module, types: Iterable[type] = OUR_CONVS + (SmoothMaxPool2d,)):
        self.items: dict = {}
        self.handles = []
        names = {m: n for n, m in model.named_modules()}
        for m in model.modules():
            if isinstance(m, tuple(types)):
                self.handles.append(m.register_forward_hook(self._hook(names[m])))

    def _hook(self, name):
        def hook(m, args, out):
            entry = {"module": m, "x": args[0].detach(), "g": None}
            self.items[name] = entry
            if out.requires_grad:
                out.register_hook(lambda g: entry.__setitem__("g", g.detach()))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def compare(capture: Capture) -> list:
    """Rows {layer, param, max_abs_err, max_rel_err} for every captured layer."""
    rows = []
    for name, e in capture.items.items():
        if e["g"] is None:
            continue
        m = e["module"]
        res = conv_check(m, e["x"], e["g"]) if isinstance(m, OUR_CONVS) else pool_check(
            m, e["x"], e["g"])
        for param, (a, r) in res.items():
            rows.append({"layer": name, "type": type(m).__name__, "param": param,
                         "max_abs_err": a, "max_rel_err": r})
    return rows
