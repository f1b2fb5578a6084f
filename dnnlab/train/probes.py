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

"Ours" are the gradients the training step itself computed (`Capture`): a conv's input,
weight and bias gradients as its Function's backward returned them (a hook on that backward
node), a pooling's input gradient (through a view of its input only it uses). So a probe
checks the very numbers the step made, and recomputes only the reference:
- input gradients on the first `SAMPLE` samples: a sample's input gradient depends on that
  sample alone, so the first rows of the step's gradient are checked at a fraction of the cost
  (a first layer's input, which the step gives no gradient: our formula's, on the sample);
- parameter gradients on the whole batch: they sum over every sample, so no sample of them can
  be checked alone.
Where the step's gradients cannot be compared so (a conv with a padding mode or "same" padding,
whose Function sees a padded input; a pooling called twice before its backward or with a
learnable temperature, stepped by the optimizer before compare runs; an unbatched input; a
bf16/fp16 step), both sides are recomputed on the sample (`conv_check`, `pool_check`): the
parameters' gradients are then their sums over it, and bf16/fp16 layers are compared on a
float64 copy.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.conv.function import ConvNdFunction, conv_input_grad
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
    parameters; those that need no gradient are not compared)."""
    params = {n: p for n, p in (("weight", m.weight), ("bias", m.bias))
              if p is not None and p.requires_grad}
    xa, xb = x.detach().requires_grad_(True), x.detach().requires_grad_(True)
    ref = _torch_conv_class(m)._conv_forward(m, xb, m.weight, m.bias)
    return _Check(["input", *params], _Graph(m(xa), [xa, *params.values()], g),
                  _Graph(ref, [xb, *params.values()], g))


def _padding(m: nn.Module) -> tuple | None:
    """m's zero padding as numbers, as torch's convolution backward takes it; None for a
    padding mode or "same" (the Function then sees a padded input: recomputed instead)."""
    if m.padding_mode != "zeros" or m.padding == "same":
        return None
    return (0,) * len(m.kernel_size) if m.padding == "valid" else tuple(m.padding)


def _conv_live(m: nn.Module, e: dict, sample: int | None) -> _Check:
    """The step's own gradients of a conv (`e["ours"]`: what its Function's backward returned
    for the input, weight and bias) against aten.convolution_backward, the kernel autograd runs
    for torch's convolution, with the weight the step used (`e["w"]`): the input gradient of
    the first `sample` samples, the parameters' of the whole batch."""
    x, g, w = e["x"], e["g"], e["w"]
    gx, gw, gb = e["ours"]
    pad, n = _padding(m), x.dim() - 2
    conf = (m.stride, pad, m.dilation, False, (0,) * n, m.groups)
    ref_gx = torch.ops.aten.convolution_backward(g[:sample], x[:sample], w, None, *conf,
                                                 (True, False, False))[0]  # (b, C_in, *in)
    if gx is None:  # the step needed no input gradient (a first layer): our formula's
        gx = conv_input_grad(g[:sample], w, ref_gx.shape, m.stride, pad, m.dilation, m.groups)
    _, ref_gw, ref_gb = torch.ops.aten.convolution_backward(
        g, x, w, [m.out_channels] if gb is not None else None, *conf,
        (False, gw is not None, gb is not None))
    names, ours, ref = ["input"], [gx[:sample]], [ref_gx]
    for name, o, r in (("weight", gw, ref_gw), ("bias", gb, ref_gb)):
        if o is not None:
            names.append(name), ours.append(o), ref.append(r)
    return _Check(names, ours, ref)


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
    """Hooks on each dnnlab layer of a training step. `items[name]`: the layer's input `x` and
    the gradient arriving at its output `g` (its last call's, as the step's last micro-batch
    makes them), and what the step's backward computed there:
    - a conv: `ours`, the input, weight and bias gradients its Function's backward returned (a
      hook on that backward node: this layer's alone, also where its weight is used elsewhere;
      the parameters' copied, as the step goes on to clip, unscale or all-reduce them in
      place), and `w`, a copy of the weight it used (the optimizer then steps it);
    - a pooling: `gx`, its input's gradient, through a view of the input only it uses
      (`reused`: the module ran again before the backward of its previous call, so the view's
      gradient is not that call's).
    None of it changes a number of the step."""

    def __init__(self, model: nn.Module, types: Iterable[type] = OUR_CONVS + (SmoothMaxPool2d,)):
        self.items: dict = {}
        self.handles = []
        names = {m: n for n, m in model.named_modules()}
        for m in model.modules():
            if not isinstance(m, tuple(types)):
                continue
            if not isinstance(m, OUR_CONVS):
                self.handles.append(m.register_forward_pre_hook(self._pre(names[m])))
            self.handles.append(m.register_forward_hook(self._hook(names[m])))

    def _pre(self, name):
        def pre(m, args):
            old, x = self.items.get(name), args[0]
            entry = {"module": m, "x": None, "g": None, "gx": None,
                     "reused": old is not None and old["g"] is None}
            self.items[name] = entry
            if not (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()):
                return None
            xv = x.view_as(x)  # used by this layer alone: its gradient is this layer's share
            xv.register_hook(lambda gx: entry.__setitem__("gx", gx.detach()))
            return (xv, *args[1:])
        return pre

    def _hook(self, name):
        def hook(m, args, out):
            if isinstance(m, OUR_CONVS):
                entry = self.items[name] = {"module": m, "ours": None}
                node = getattr(out, "grad_fn", None)
                if issubclass(getattr(node, "_forward_cls", type(None)), ConvNdFunction):
                    entry["w"] = m.weight.detach().clone()
                    self.handles.append(node.register_hook(
                        lambda gi, go: entry.__setitem__("ours", _copied(gi[:3]))))
            else:
                entry = self.items[name]
            entry["x"], entry["g"] = args[0].detach(), None
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: entry.__setitem__("g", g.detach()))
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _copied(grads) -> tuple:
    """A conv backward's (input, weight, bias) gradients: the input's as it is (nothing writes
    into it while we hold it), the parameters' copied (they become .grad)."""
    gx, gw, gb = grads
    return (None if gx is None else gx.detach(), *(None if t is None else t.detach().clone()
                                                   for t in (gw, gb)))


SAMPLE = 8  # samples of the batch whose input gradients a probe checks


def _check(name: str, e: dict, sample: int | None) -> _Check:
    """The check of one captured layer: the step's own gradients where they are that layer's
    alone and in its dtype, else both sides recomputed on the sample."""
    m, x, g = e["module"], e["x"], e["g"]
    same = x.dtype in (torch.float32, torch.float64) and g.dtype == x.dtype
    if isinstance(m, OUR_CONVS):
        batched = x.dim() == len(m.kernel_size) + 2
        ours = e["ours"]
        if (same and batched and ours is not None and _padding(m) is not None
                and all(t is None or t.dtype == x.dtype for t in ours)):
            return _conv_live(m, e, sample)
    else:
        batched = x.dim() == 4
        gx = e["gx"]
        # a learnable beta has been stepped since: recomputed below, both sides with the new one
        if (same and batched and gx is not None and gx.dtype == x.dtype and not e["reused"]
                and not any(p.requires_grad for p in m.parameters())):
            return _pool_live(m, x, g, gx, sample)
    if batched:
        x, g = x[:sample], g[:sample]  # (b <= sample, ...)
    if not same:  # trainer.precision=bf16/fp16: compare in float64, on a float64 copy
        m, x, g = copy.deepcopy(m).double(), x.double(), g.double()
    return _conv(m, x, g) if isinstance(m, OUR_CONVS) else _pool(m, x, g)


def compare(capture: Capture, sample: int | None = SAMPLE) -> list[dict]:
    """Rows {layer, type, param, max_abs_err, max_rel_err} for every captured layer whose output
    got a gradient: input gradients on the first `sample` samples of its batch (None: all),
    parameter gradients on the whole batch (module doc)."""
    names = [n for n, e in capture.items.items() if e["g"] is not None]
    checks = [_check(n, capture.items[n], sample) for n in names]
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
