"""Check the gradients of docs/math.md (3a) several ways.

- `compare_methods`: the chain's y_L and gradients by every method of dnnlab.conv.chain
  (matrix, conv, autograd, dnnlab), every pair compared per parameter.
- `gradcheck_chain`: torch.autograd.gradcheck (float64, finite differences) of the chain run
  through our ConvNdFunction, in both weight-gradient modes.
- `compare_real_net`: a torchvision network with `swap_convs` against the native one, every
  parameter's and the input's gradient.

Each comparison row is {"net", "a", "b", "param", "max_abs_err", "max_rel_err", "passed"}: the
max abs error and the max abs error / max |a| (dnnlab.core.dtypes.max_errors); a row passes when
either is <= the tolerance (NaN fails both).
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import torch
from torch.autograd.gradcheck import GradcheckError

from dnnlab.conv.chain import ACTIVATIONS, METHODS, ChainSpec, init_params
from dnnlab.conv.function import apply_conv, weight_grad_mode
from dnnlab.conv.modules import OUR_CONVS, swap_convs
from dnnlab.core.dtypes import dtype_name, max_errors
from dnnlab.core.errors import ShapeError, first_line
from dnnlab.core.timing import torch_threads


def passes(abs_err: float, rel_err: float, tol: float) -> bool:
    return abs_err <= tol or rel_err <= tol  # NaN fails both


def formula(param: str) -> str:
    """The formula of docs/math.md (3a) for a parameter: w2 -> C_(v_2^T) y_1, b2 -> v_2 . 1."""
    if param == "y":
        return "y_L (forward)"
    l = int(param[1:])
    return f"C_(v_{l}^T) y_{l - 1}" if param[0] == "w" else f"v_{l} . 1"


def chain_inputs(spec: ChainSpec, batch: int, dtype: torch.dtype, seed: int):
    """Parameters (w_l ~ N(0, 1/f_l), b_l ~ N(0, 0.01)), inputs y_0 (B, n_0), cotangent u
    (B, n_L); drawn in float64 and then cast, so every dtype sees the same numbers."""
    params = init_params(spec, seed, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    y0 = torch.randn(batch, spec.n0, generator=g, dtype=torch.float64).to(dtype)
    u = torch.randn(batch, spec.sizes()[-1], generator=g, dtype=torch.float64).to(dtype)
    return params, y0, u


def compare_methods(spec: ChainSpec, methods: Sequence[str], batch: int, dtype: torch.dtype,
                    seed: int, tol: float) -> dict:
    """{"comparisons": rows, "seconds": {method: s}, "scale": {param: max |first method|}}; the
    first method of a pair is the reference of its relative error."""
    params, y0, u = chain_inputs(spec, batch, dtype, seed)
    grads, seconds = {}, {}
    for m in methods:
        t = time.perf_counter()
        with torch.no_grad(), torch_threads(1):  # tiny tensors: one thread is as fast
            grads[m] = {k: v.detach() for k, v in METHODS[m](spec, params, y0, u).items()}
        seconds[m] = time.perf_counter() - t
    rows = []
    for a, b in itertools.combinations(methods, 2):
        for param in grads[a]:
            abs_err, rel_err = max_errors(grads[b][param], grads[a][param])
            rows.append({"net": "chain", "a": a, "b": b, "param": param, "max_abs_err": abs_err,
                         "max_rel_err": rel_err, "passed": passes(abs_err, rel_err, tol)})
    scale = {k: v.abs().max().item() for k, v in grads[methods[0]].items()}
    return {"comparisons": rows, "seconds": seconds, "scale": scale}


def pair_summary(rows: list[dict]) -> dict[str, dict]:
    """Max errors per method pair over all parameters: {"matrix-conv": {...}, ...}."""
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(f"{r['a']}-{r['b']}",
                           {"max_abs_err": 0.0, "max_rel_err": 0.0, "passed": True})
        s["max_abs_err"] = max(s["max_abs_err"], r["max_abs_err"])
        s["max_rel_err"] = max(s["max_rel_err"], r["max_rel_err"])
        s["passed"] &= r["passed"]
    return out


def gradcheck_chain(spec: ChainSpec, batch: int, seed: int) -> dict:
    """gradcheck (float64) of y_L w.r.t. y_0 and every w_l, b_l, the chain run through
    ConvNdFunction (our backward), in both weight-gradient modes; at a small size:
    n_0 = max(min(n0, 24), sum(f_l - 1) + 4), batch <= 2."""
    n0 = max(min(spec.n0, 24), sum(f - 1 for f in spec.filters) + 4)
    small = ChainSpec(n0=n0, filters=spec.filters, activation=spec.activation, bias=spec.bias)
    batch = min(batch, 2)
    params = init_params(small, seed, torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    y0 = torch.randn(batch, n0, generator=g, dtype=torch.float64)  # (B, n_0)
    flat = [y0] + [t for w, b in params for t in (w, b) if t is not None]
    flat = [t.detach().requires_grad_(True) for t in flat]
    layout = [b is not None for _, b in params]
    sigma = ACTIVATIONS[small.activation][0]

    def net(y0, *ps):
        it, y = iter(ps), y0[:, None]  # (B, 1, n_0)
        for l, has_b in enumerate(layout, start=1):
            w = next(it)
            b = next(it).view(1) if has_b else None
            # docs/math.md (3b): z_l = A_{w_l} y_{l-1} + b_l 1 by our Function (our backward)
            z = apply_conv(y, w.view(1, 1, -1), b, (1,), (0,), (1,), 1)
            y = sigma(z) if l < small.depth else z
        return y[:, 0]  # (B, n_L)

    out = {"n0": n0, "batch": batch, "inputs": sum(t.numel() for t in flat), "modes": {},
           "errors": {}}
    t = time.perf_counter()
    for mode in ("aten", "explicit"):
        with weight_grad_mode(mode), torch_threads(1):
            try:
                ok = torch.autograd.gradcheck(net, flat, eps=1e-6, atol=1e-7, rtol=1e-5)
            except GradcheckError as err:
                ok = False
                out["errors"][mode] = first_line(err)
        out["modes"][mode] = bool(ok)
    out["passed"] = all(out["modes"].values())
    out["seconds"] = time.perf_counter() - t
    return out


def _first_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):  # googlenet / inception in train mode
        return out.logits
    return out[0]


def compare_real_net(model: torch.nn.Module, name: str, input_shape: Sequence[int],
                     seed: int, tol: float, key: str = "") -> dict:
    """Gradients of J = sum <u, output> w.r.t. the input and every parameter, native torch convs
    against dnnlab's (`swap_convs`, same parameters, same RNG state so dropout masks agree).
    `model` (train mode, its dtype the one compared) is swapped in place.
    Returns {"summary": {...}, "comparisons": rows}; an input the network cannot take raises
    ShapeError naming `key`."""
    t0 = time.perf_counter()
    dtype = next(model.parameters()).dtype
    names, params = zip(*model.named_parameters())
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(list(input_shape), generator=g, dtype=torch.float64).to(dtype)
    u = None

    def grads():
        nonlocal u
        torch.manual_seed(seed + 2)
        xi = x.detach().requires_grad_(True)
        out = _first_output(model(xi))
        if u is None:
            u = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
        return torch.autograd.grad(out, (xi,) + params, u, allow_unused=True)

    try:
        native = grads()
    except (RuntimeError, ValueError) as err:
        raise ShapeError(f"{key or name} ({name}, input_shape={list(input_shape)}): "
                         f"{first_line(err)}") from None
    swap_convs(model)
    convs = sum(isinstance(m, OUR_CONVS) for m in model.modules())
    ours = grads()
    rows = []
    for pname, a, b in zip(("input",) + names, ours, native):
        if a is None or b is None:
            continue
        abs_err, rel_err = max_errors(a, b)
        rows.append({"net": name, "a": f"{name}/dnnlab", "b": f"{name}/torch", "param": pname,
                     "max_abs_err": abs_err, "max_rel_err": rel_err,
                     "passed": passes(abs_err, rel_err, tol)})
    worst = max(rows, key=lambda r: r["max_rel_err"])
    summary = {"name": name, "input_shape": list(input_shape), "dtype": dtype_name(dtype),
               "convs_swapped": convs, "params_compared": len(rows),
               "max_abs_err": max(r["max_abs_err"] for r in rows),
               "max_rel_err": worst["max_rel_err"], "worst_param": worst["param"],
               "tolerance": tol, "passed": all(r["passed"] for r in rows),
               "seconds": time.perf_counter() - t0}
    return {"summary": summary, "comparisons": rows}
