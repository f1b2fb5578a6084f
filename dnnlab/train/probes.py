"""Training-time gradient probes: the hand-written gradients of dnnlab's layers against
autograd references, on the live batch, and the pooling's gradient statistics.

For a dnnlab Conv (docs/math.md (3b): input gradient by transposed convolution, weight gradient
by correlation) the reference is torch's own convolution through autograd; for SmoothMaxPool2d
(docs/math.md (1c): gradient softmax(beta x)) it is dnnlab.smoothmax.reference (logsumexp /
amax through autograd). Both get the same input and the same upstream gradient.

    cap = Capture(model)          # hooks keep each layer's input and output gradient
    loss = F.cross_entropy(model(x), y); loss.backward(); cap.close()
    rows = compare(cap)           # [{layer, type, param, max_abs_err, max_rel_err}, ...]

A probe checks the first `SAMPLE` samples of the batch: each layer's gradients for those
samples (its input's, and its parameters' summed over them) given the same input and upstream
gradient. Every sample's gradients come out of the same formula, so a sample checks it as the
whole batch would, at a fraction of the cost of redoing every layer on the whole batch.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.conv.modules import OUR_CONVS
from dnnlab.core.dtypes import max_errors
from dnnlab.smoothmax.modules import SmoothMaxPool2d
from dnnlab.smoothmax.reference import smooth_max_reference
from dnnlab.smoothmax.windows import windows


def _torch_conv_class(m: nn.Module) -> type:
    return next(c for c in type(m).__mro__ if c.__module__.startswith("torch.nn"))


@dataclass
class _Check:
    """One layer's check: its output through our Function and through the reference, each
    with the tensors whose gradients are compared (the input, then the parameters), and the
    upstream gradient both get."""

    names: list[str]  # "input", "weight", "bias": what each gradient is
    ours: torch.Tensor
    ours_inputs: list[torch.Tensor]
    ref: torch.Tensor
    ref_inputs: list[torch.Tensor]
    g: torch.Tensor


def _conv(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> _Check:
    """Our conv Function against torch's convolution, on the same x and parameters."""
    params = [m.weight] + ([m.bias] if m.bias is not None else [])
    xa, xb = x.detach().requires_grad_(True), x.detach().requires_grad_(True)
    ref = _torch_conv_class(m)._conv_forward(m, xb, m.weight, m.bias)
    return _Check(["input", "weight", "bias"][:1 + len(params)], m(xa), [xa, *params], ref,
                  [xb, *params], g)


def _errors(checks: list[_Check]) -> list[dict]:
    """{gradient: dnnlab.core.dtypes.max_errors (max abs error, relative)} per check; each
    side's gradients in one backward pass (per check where two share a parameter)."""
    if not checks:
        return []
    sides = []
    for outs, inputs in (([c.ours for c in checks], [c.ours_inputs for c in checks]),
                         ([c.ref for c in checks], [c.ref_inputs for c in checks])):
        flat = [t for ins in inputs for t in ins]
        if len({id(t) for t in flat}) == len(flat):
            sides.append(torch.autograd.grad(outs, flat, [c.g for c in checks]))
        else:  # a tied parameter: its gradient through each layer alone
            sides.append([d for o, ins, c in zip(outs, inputs, checks)
                          for d in torch.autograd.grad(o, ins, c.g)])
    errors = iter(max_errors(o, r) for o, r in zip(*sides))
    return [{name: next(errors) for name in c.names} for c in checks]


def conv_check(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    """Gradients of input, weight, bias: our Function vs torch's conv, same x and upstream g."""
    return _errors([_conv(m, x, g)])[0]


def _windows(m: SmoothMaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H_out, W_out, kh, kw) windows of x as the layer pools them, padding (-inf),
    dilation and ceil_mode included (global: (B, C, 1, 1, H, W))."""
    if m.kernel_size is None:
        return x[:, :, None, None]
    return windows(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def _beta_for(m: SmoothMaxPool2d, c: int):
    """The layer's beta as a float, or (per channel) shaped (1, C, 1, 1, 1, 1) for windows."""
    b = m.beta
    if isinstance(b, torch.Tensor):
        b = b.detach()
        if b.numel() > 1:
            return b.view(1, c, 1, 1, 1, 1)
        b = float(b)
    return b


def _pool(m: SmoothMaxPool2d, x: torch.Tensor, g: torch.Tensor) -> _Check:
    """The pooling against the plain-autograd reference on the same x."""
    xa, xb = x.detach().requires_grad_(True), x.detach().requires_grad_(True)
    beta = _beta_for(m, x.shape[1])
    if m.ties == "first" and not isinstance(beta, torch.Tensor) and math.isinf(beta):
        # torch's max pooling is the layer itself here
        ref = F.adaptive_max_pool2d(xb, 1) if m.kernel_size is None else F.max_pool2d(
            xb, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    else:
        # each window's entries along a leading dim, contiguous: torch reduces over it in a few
        # vectorized passes, where a reduction over a window's last two dims of a strided view
        # (2x2 windows) took several times as long
        w = _windows(m, xb).flatten(-2).movedim(-1, 0).contiguous()  # (kh*kw, B, C, Ho, Wo)
        if isinstance(beta, torch.Tensor):
            beta = beta.reshape(1, 1, -1, 1, 1)  # per channel
        ref = smooth_max_reference(w, beta, dim=0, normalized=m.normalized)  # (B, C, Ho, Wo)
    return _Check(["input"], m(xa), [xa], ref.reshape(g.shape), [xb], g)


def pool_check(m: SmoothMaxPool2d, x: torch.Tensor, g: torch.Tensor) -> dict:
    """The input gradient of the pooling vs autograd of the reference, same x and upstream g."""
    return _errors([_pool(m, x, g)])[0]


@torch.no_grad()
def pool_stats(m: SmoothMaxPool2d, x: torch.Tensor) -> dict:
    """Entropy of softmax(beta x) per window (mean) and its mass on the argmax (1 at inf), in
    float64; p log p is xlogy(p, p) (0 where p is 0: a window entry of -inf, or one whose weight
    underflows)."""
    w = _windows(m, x).flatten(-2).double()  # (B, C, Ho, Wo, n)
    beta = _beta_for(m, x.shape[1])
    if isinstance(beta, torch.Tensor):
        beta = beta.double().view(1, -1, 1, 1, 1)
    if not isinstance(beta, torch.Tensor) and math.isinf(beta):
        top = (w == w.amax(-1, keepdim=True)).double()
        if m.ties == "first":  # max pooling: one argmax per window
            top = torch.zeros_like(w).scatter_(-1, w.argmax(-1, keepdim=True), 1.0)
        p = top / top.sum(-1, keepdim=True)  # ties shared: the limit of softmax (docs/math.md (1c))
    else:
        # grad nu_beta = softmax(beta x) (docs/math.md (1c)), written out: torch.softmax over a
        # last dim of a few entries (a 2x2 window) pays a per-call overhead these four ops avoid
        z = w.mul_(beta)
        e = z.sub_(z.amax(-1, keepdim=True)).exp_()  # exp(beta (x - max)) in (0, 1]
        p = e.div_(e.sum(-1, keepdim=True))
    ent = torch.xlogy(p, p).sum(-1)  # (B, C, Ho, Wo): minus the entropy of each window
    n = w.shape[-1]
    return {"entropy": -ent.mean().item(), "entropy_max": math.log(n),
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

    def close(self) -> None:
        for h in self.handles:
            h.remove()


SAMPLE = 8  # samples of the batch a probe checks


def compare(capture: Capture, sample: int | None = SAMPLE) -> list[dict]:
    """Rows {layer, type, param, max_abs_err, max_rel_err} for every captured layer, on the
    first `sample` samples of its batch (None: all)."""
    checks = []
    for name, e in capture.items.items():
        if e["g"] is None:
            continue
        m, x, g = e["module"], e["x"][:sample], e["g"][:sample]  # (b <= sample, ...)
        if x.dtype not in (torch.float32, torch.float64) or g.dtype != x.dtype:
            # trainer.precision=bf16/fp16: compare in float64, on a float64 copy of the layer
            m, x, g = copy.deepcopy(m).double(), x.double(), g.double()
        checks.append((name, m, _conv(m, x, g) if isinstance(m, OUR_CONVS) else _pool(m, x, g)))
    rows = []
    for (name, m, _), res in zip(checks, _errors([c for _, _, c in checks])):
        for param, (a, r) in res.items():
            rows.append({"layer": name, "type": type(m).__name__, "param": param,
                         "max_abs_err": a, "max_rel_err": r})
    return rows


def probe_metrics(rows: list[dict]) -> dict[str, float]:
    """`probe/max_abs_err` and `probe/max_rel_err`: the worst over the rows of `compare` (every
    layer and parameter; the rows themselves go to the `probes` table)."""
    return {"probe/max_abs_err": max((r["max_abs_err"] for r in rows), default=0.0),
            "probe/max_rel_err": max((r["max_rel_err"] for r in rows), default=0.0)}


@torch.no_grad()
def pooling_stats(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Gradient statistics of every SmoothMaxPool2d on a batch (docs/math.md (1c)):
    `pool/<layer>/entropy|entropy_rel|argmax_mass|beta`, and the means `pool/entropy_rel`,
    `pool/argmax_mass` over the layers. Leaves the model in eval mode."""
    cap = Capture(model, types=(SmoothMaxPool2d,))
    try:
        model.eval()
        model(x)
    finally:
        cap.close()
    out = {}
    for name, e in cap.items.items():
        s = pool_stats(e["module"], e["x"])
        b = e["module"].beta
        out[f"pool/{name}/entropy"] = s["entropy"]
        out[f"pool/{name}/entropy_rel"] = s["entropy"] / s["entropy_max"]
        out[f"pool/{name}/argmax_mass"] = s["argmax_mass"]
        out[f"pool/{name}/beta"] = float(b.mean()) if isinstance(b, torch.Tensor) else float(b)
    if cap.items:
        ents = [v for k, v in out.items() if k.endswith("/entropy_rel")]
        out["pool/entropy_rel"] = sum(ents) / len(ents)
        masses = [v for k, v in out.items() if k.endswith("/argmax_mass")]
        out["pool/argmax_mass"] = sum(masses) / len(masses)
    return out


def pool_beta(model: nn.Module) -> float | str | None:
    """The model's pooling temperature for results.json: a float, "inf", "learnable", or None
    (no SmoothMaxPool2d)."""
    for m in model.modules():
        if isinstance(m, SmoothMaxPool2d):
            if m.learnable:
                return "learnable"
            b = m.beta
            if isinstance(b, torch.Tensor):
                return str(b.tolist())
            return b if math.isfinite(b) else "inf"
    return None
