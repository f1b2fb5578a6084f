"""Training-time gradient probes: the hand-written gradients of dnnlab's layers against
autograd references, on the live batch, and the pooling's gradient statistics.

For a dnnlab Conv (docs/math.md (3b): input gradient by transposed convolution, weight gradient
by correlation) the reference is torch's own convolution backward (aten.convolution_backward,
what autograd runs for F.conv{N}d); for SmoothMaxPool2d (docs/math.md (1c): gradient
softmax(beta x)) it is dnnlab.smoothmax.reference (logsumexp / amax through autograd). Both get
the same input and the same upstream gradient.

    cap = Capture(model)          # hooks keep each layer's input, gradients of the step
    loss = F.cross_entropy(model(x), y); loss.backward(); cap.close()
    rows = compare(cap)           # [{layer, type, param, max_abs_err, max_rel_err}, ...]

"Ours" are the gradients the training step itself computed: each layer's input gradient, read
through a view of its input (only that layer's share: a view used by that layer alone), and its
parameters' gradients, read by tensor hooks. So a probe checks the very numbers the optimizer
steps with, and recomputes only the reference:
- input gradients on the first `SAMPLE` samples: a sample's input gradient depends on that
  sample alone, so the first rows of the step's gradient are checked at a fraction of the cost;
- parameter gradients on the whole batch: they sum over every sample, so no sample of them can
  be checked alone.
Where the step's gradients are not one layer's alone or not in the layer's dtype (a parameter
shared with another module, a module called twice in a step, a bf16/fp16 step, a padding mode
or a string padding the reference call does not take), both sides are recomputed on the sample
(`conv_check`, `pool_check`): the parameters' gradients are then their sums over it, and bf16 /
fp16 layers are compared on a float64 copy.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.conv.function import conv_input_grad
from dnnlab.conv.modules import OUR_CONVS
from dnnlab.core.dtypes import max_errors
from dnnlab.smoothmax.modules import SmoothMaxPool2d
from dnnlab.smoothmax.reference import smooth_max_reference
from dnnlab.smoothmax.windows import windows


def _torch_conv_class(m: nn.Module) -> type:
    return next(c for c in type(m).__mro__ if c.__module__.startswith("torch.nn"))


@dataclass
class _Graph:
    """Gradients still to take: of `out` with respect to `inputs`, given the upstream `g`."""

    out: torch.Tensor
    inputs: list[torch.Tensor]
    g: torch.Tensor


@dataclass
class _Check:
    """One layer's check: the gradients `names` ("input", "weight", "bias") through our layer and
    through the reference, each either taken already or still a _Graph."""

    names: list[str]
    ours: _Graph | list[torch.Tensor]
    ref: _Graph | list[torch.Tensor]


def _conv(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> _Check:
    """Our conv Function against torch's convolution through autograd, both on x (the same
    parameters)."""
    params = [m.weight] + ([m.bias] if m.bias is not None else [])
    xa, xb = x.detach().requires_grad_(True), x.detach().requires_grad_(True)
    ref = _torch_conv_class(m)._conv_forward(m, xb, m.weight, m.bias)
    return _Check(["input", "weight", "bias"][:1 + len(params)], _Graph(m(xa), [xa, *params], g),
                  _Graph(ref, [xb, *params], g))


def _direct(m: nn.Module, x: torch.Tensor) -> bool:
    """Whether torch's convolution backward takes m's arguments as they are: zeros padding
    given as numbers, a batched input (else the reference goes through m's torch class)."""
    return (m.padding_mode == "zeros" and not isinstance(m.padding, str)
            and x.dim() == len(m.kernel_size) + 2)


def _conv_live(m: nn.Module, x: torch.Tensor, g: torch.Tensor, w: torch.Tensor,
               ours: list[torch.Tensor], sample: int | None) -> _Check:
    """The step's own gradients of a conv (`ours`: input, weight, bias) against
    aten.convolution_backward, the kernel autograd runs for torch's convolution, with the weight
    `w` the step used: the input gradient of the first `sample` samples, the parameters' of the
    whole batch (x, g)."""
    n = x.dim() - 2
    conf = (m.stride, m.padding, m.dilation, False, (0,) * n, m.groups)
    gx = torch.ops.aten.convolution_backward(g[:sample], x[:sample], w, None, *conf,
                                             (True, False, False))[0]  # (b, C_in, *in)
    if ours[0] is None:  # the step needed no input gradient: our formula's, on the sample
        ours[0] = conv_input_grad(g[:sample], w, gx.shape, m.stride, m.padding, m.dilation,
                                  m.groups)
    bias = m.bias is not None
    _, gw, gb = torch.ops.aten.convolution_backward(
        g, x, w, [m.out_channels] if bias else None, *conf, (False, True, bias))
    return _Check(["input", "weight", "bias"][:2 + bias], [ours[0][:sample], *ours[1:]],
                  [gx, gw] + ([gb] if bias else []))


def _grads(graphs: list[_Graph]) -> list[tuple[torch.Tensor, ...]]:
    """Each graph's gradients, all in one backward pass (per graph where two share an input:
    a tied parameter's gradient through each layer alone)."""
    if not graphs:
        return []
    flat = [t for gr in graphs for t in gr.inputs]
    if len({id(t) for t in flat}) < len(flat):
        return [torch.autograd.grad(gr.out, gr.inputs, gr.g) for gr in graphs]
    d = iter(torch.autograd.grad([gr.out for gr in graphs], flat, [gr.g for gr in graphs]))
    return [tuple(next(d) for _ in gr.inputs) for gr in graphs]


def _errors(checks: list[_Check]) -> list[dict]:
    """{gradient: dnnlab.core.dtypes.max_errors (max abs error, relative)} per check; each
    side's gradients still to take in one backward pass."""
    sides = []
    for side in ("ours", "ref"):
        todo = iter(_grads([getattr(c, side) for c in checks
                            if isinstance(getattr(c, side), _Graph)]))
        sides.append([next(todo) if isinstance(getattr(c, side), _Graph) else getattr(c, side)
                      for c in checks])
    return [{name: max_errors(o, r) for name, o, r in zip(c.names, os, rs)}
            for c, os, rs in zip(checks, *sides)]


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


def _pool_ref(m: SmoothMaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """The plain-autograd reference of the pooling m on x: (B, C, H_out, W_out)."""
    beta = _beta_for(m, x.shape[1])
    if m.ties == "first" and not isinstance(beta, torch.Tensor) and math.isinf(beta):
        # torch's max pooling is the layer itself here
        return F.adaptive_max_pool2d(x, 1) if m.kernel_size is None else F.max_pool2d(
            x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    # each window's entries along a leading dim, contiguous: torch reduces over it in a few
    # vectorized passes, where a reduction over a window's last two dims of a strided view
    # (2x2 windows) took several times as long
    w = _windows(m, x).flatten(-2).movedim(-1, 0).contiguous()  # (kh*kw, B, C, Ho, Wo)
    if isinstance(beta, torch.Tensor):
        beta = beta.reshape(1, 1, -1, 1, 1)  # per channel
    return smooth_max_reference(w, beta, dim=0, normalized=m.normalized)  # (B, C, Ho, Wo)


def _pool(m: SmoothMaxPool2d, x: torch.Tensor, g: torch.Tensor) -> _Check:
    """The pooling against the plain-autograd reference, both on x."""
    xa, xb = x.detach().requires_grad_(True), x.detach().requires_grad_(True)
    return _Check(["input"], _Graph(m(xa), [xa], g),
                  _Graph(_pool_ref(m, xb).reshape(g.shape), [xb], g))


def _pool_live(m: SmoothMaxPool2d, x: torch.Tensor, g: torch.Tensor, gx: torch.Tensor,
               sample: int | None) -> _Check:
    """The step's own input gradient of a pooling (`gx`) against the reference's, on the first
    `sample` samples."""
    xb, g = x[:sample].detach().requires_grad_(True), g[:sample]
    return _Check(["input"], [gx[:sample]], _Graph(_pool_ref(m, xb).reshape(g.shape), [xb], g))


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
    """Hooks on each dnnlab layer of a training step. `items[name]`: the layer's input `x`, the
    gradient arriving at its output `g`, and the gradients the step's backward computed: its
    input's `gx` (through a view of the input that only this layer uses; none where the input
    needs no gradient, as a first layer's: compare takes our formula's on the sample) and its
    parameters' `grads` (tensor hooks; the last micro-batch's, as x and g are; copies, as the
    step goes on to clip, unscale or all-reduce them in place), with a copy of a conv's weight
    `w` as the step used it (the optimizer then steps it). `reused`: the module ran again before
    the backward of its previous call; `shared`: a parameter that another module also holds.
    None of it changes a number of the step."""

    def __init__(self, model: nn.Module, types: Iterable[type] = OUR_CONVS + (SmoothMaxPool2d,)):
        self.items: dict = {}
        self.shared: set[str] = set()
        self.handles = []
        names = {m: n for n, m in model.named_modules()}
        uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        for m in model.modules():
            if not isinstance(m, tuple(types)):
                continue
            name = names[m]
            self.handles += [m.register_forward_pre_hook(self._pre(name)),
                             m.register_forward_hook(self._hook(name))]
            for pname, prm in m.named_parameters(recurse=False):
                if uses[id(prm)] > 1:
                    self.shared.add(name)
                if prm.requires_grad:
                    self.handles.append(prm.register_hook(self._param(name, pname)))

    def _pre(self, name):
        def pre(m, args):
            old = self.items.get(name)
            x = args[0]
            entry = {"module": m, "x": None, "g": None, "gx": None, "grads": {},
                     "reused": old is not None and old["g"] is None,
                     "needs_gx": isinstance(x, torch.Tensor) and x.requires_grad}
            self.items[name] = entry
            if not (entry["needs_gx"] and torch.is_grad_enabled()):
                return None
            xv = x.view_as(x)  # used by this layer alone: its gradient is this layer's share
            xv.register_hook(lambda gx: entry.__setitem__("gx", gx.detach()))
            return (xv, *args[1:])
        return pre

    def _hook(self, name):
        def hook(m, args, out):
            entry = self.items[name]
            entry["x"] = args[0].detach()
            if isinstance(m, OUR_CONVS):
                entry["w"] = m.weight.detach().clone()
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: entry.__setitem__("g", g.detach()))
        return hook

    def _param(self, name, pname):
        def hook(grad):
            entry = self.items.get(name)
            if entry is not None:
                entry["grads"][pname] = grad.detach().clone()
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


SAMPLE = 8  # samples of the batch whose input gradients a probe checks


def _check(capture: Capture, name: str, e: dict, sample: int | None) -> _Check:
    """The check of one captured layer: the step's own gradients where they are that layer's
    alone and in its dtype, else both sides recomputed on the sample."""
    m, x, g, gx = e["module"], e["x"], e["g"], e["gx"]
    same = x.dtype in (torch.float32, torch.float64) and g.dtype == x.dtype
    # the step's input gradient, where it needed one (a conv's input may need none: our formula's)
    got_gx = gx is not None and gx.dtype == x.dtype if e["needs_gx"] else True
    live = same and not e["reused"] and got_gx
    if isinstance(m, OUR_CONVS):
        params = ["weight"] + (["bias"] if m.bias is not None else [])
        if (live and name not in capture.shared and _direct(m, x)
                and all(p in e["grads"] for p in params)):
            return _conv_live(m, x, g, e["w"], [gx, *(e["grads"][p] for p in params)], sample)
    elif live and gx is not None and not any(p.requires_grad for p in m.parameters()):
        # (a learnable beta has been stepped since: recomputed below, both sides with the new one)
        return _pool_live(m, x, g, gx, sample)
    x, g = x[:sample], g[:sample]  # (b <= sample, ...)
    if not same:  # trainer.precision=bf16/fp16: compare in float64, on a float64 copy
        m, x, g = copy.deepcopy(m).double(), x.double(), g.double()
    return _conv(m, x, g) if isinstance(m, OUR_CONVS) else _pool(m, x, g)


def compare(capture: Capture, sample: int | None = SAMPLE) -> list[dict]:
    """Rows {layer, type, param, max_abs_err, max_rel_err} for every captured layer whose output
    got a gradient: input gradients on the first `sample` samples of its batch (None: all),
    parameter gradients on the whole batch (module doc)."""
    names = [n for n, e in capture.items.items() if e["g"] is not None]
    checks = [_check(capture, n, capture.items[n], sample) for n in names]
    rows = []
    for name, res in zip(names, _errors(checks)):
        for param, (a, r) in res.items():
            rows.append({"layer": name, "type": type(capture.items[name]["module"]).__name__,
                         "param": param, "max_abs_err": a, "max_rel_err": r})
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
