"""The built-in handlers of the counter: how each torch call is counted (docs/math.md (2)).

Each handler is `handler(counter, name, args, kwargs, out)` (see `dnnlab.opcount.registry`) and
adds rows with `counter.add(...)`. Conv and linear follow the closed forms of `formulas.py`;
backward MACs follow docs/math.md (4b) (input gradient by transposed convolution, weight
gradient by correlation, each the forward's MACs).
"""
from __future__ import annotations

from math import prod
from typing import Any

import torch

from dnnlab.opcount import formulas as fm
from dnnlab.opcount.registry import arg, needs_grad, register_handler, shape_of


def _tup(v: Any, n: int) -> tuple:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


def _conv_precheck(counter: Any, args, kwargs) -> None:
    x, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    d = w.dim() - 2
    groups = arg(args, kwargs, 6, "groups", 1)
    batched = x.dim() == d + 2
    if x.dim() not in (d + 1, d + 2):
        raise counter.fail(f"expected a {d + 2}-d input (N, C, *spatial), got shape {shape_of(x)}")
    c_in = x.shape[1] if batched else x.shape[0]
    if c_in != w.shape[1] * groups:
        raise counter.fail(f"input has {c_in} channels, the layer expects {w.shape[1] * groups} "
                           f"(input shape {shape_of(x)}, weight shape {shape_of(w)})")
    pad = arg(args, kwargs, 4, "padding", 0)
    if isinstance(pad, str):
        return
    stride, pad = _tup(arg(args, kwargs, 3, "stride", 1), d), _tup(pad, d)
    dil = _tup(arg(args, kwargs, 5, "dilation", 1), d)
    spatial = x.shape[-d:]
    for i in range(d):
        n = fm.conv_out_size(spatial[i], w.shape[2 + i], stride[i], pad[i], dil[i])
        if n < 1:
            raise counter.fail(
                f"input of shape {shape_of(x)} is too small: kernel {w.shape[2 + i]} "
                f"(dilation {dil[i]}) on padded length {spatial[i] + 2 * pad[i]} gives an "
                f"output of length {n}")


def _conv(counter: Any, name, args, kwargs, out) -> None:
    x, w, b = (arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"),
               arg(args, kwargs, 2, "bias"))
    d = w.dim() - 2
    groups = arg(args, kwargs, 6, "groups", 1)
    pad = arg(args, kwargs, 4, "padding", 0)
    stride = _tup(arg(args, kwargs, 3, "stride", 1), d)
    dil = _tup(arg(args, kwargs, 5, "dilation", 1), d)
    if isinstance(pad, str):  # 'same' keeps the size (stride 1), 'valid' pads nothing
        expect = list(x.shape[-d:]) if pad == "same" else [
            fm.conv_out_size(x.shape[-d + i], w.shape[2 + i], stride[i], 0, dil[i])
            for i in range(d)]
    else:
        pad = _tup(pad, d)
        expect = [fm.conv_out_size(x.shape[-d + i], w.shape[2 + i], stride[i], pad[i], dil[i])
                  for i in range(d)]
    if list(out.shape[-d:]) != expect:  # the standard formula must agree with torch
        raise counter.fail(f"output shape {shape_of(out)} disagrees with the formula {expect}")
    out_shape = list(out.shape) if out.dim() == d + 2 else [1] + list(out.shape)
    c_in = x.shape[-d - 1]
    bias = b is not None and counter.count_bias
    mults, adds, macs = fm.conv_counts(out_shape, c_in, w.shape[2:], groups, bias)
    # docs/math.md (4b): input grad by transposed conv, weight grad by correlation
    bwd = macs * (int(needs_grad(x)) + int(needs_grad(w)))
    counter.add(name, "conv", shape_of(x), shape_of(out), mults, adds, macs, bwd,
                prod(out_shape) if bias else 0)
    counter.rows[-1].extra.update(w_shape=shape_of(w), groups=groups, transposed=False,
                                  x_rg=needs_grad(x), w_rg=needs_grad(w))
    if isinstance(arg(args, kwargs, 4, "padding", 0), str):
        counter.rows[-1].extra["string_padding"] = True


def _conv_transpose(counter: Any, name, args, kwargs, out) -> None:
    x, w, b = (arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"),
               arg(args, kwargs, 2, "bias"))
    d = w.dim() - 2
    stride = _tup(arg(args, kwargs, 3, "stride", 1), d)
    pad = _tup(arg(args, kwargs, 4, "padding", 0), d)
    opad = _tup(arg(args, kwargs, 5, "output_padding", 0), d)
    groups = arg(args, kwargs, 6, "groups", 1)
    dil = _tup(arg(args, kwargs, 7, "dilation", 1), d)
    expect = [fm.conv_transpose_out_size(x.shape[-d + i], w.shape[2 + i], stride[i], pad[i],
                                         dil[i], opad[i]) for i in range(d)]
    if list(out.shape[-d:]) != expect:
        raise counter.fail(f"output shape {shape_of(out)} disagrees with the formula {expect}")
    in_shape = list(x.shape) if x.dim() == d + 2 else [1] + list(x.shape)
    out_shape = list(out.shape) if out.dim() == d + 2 else [1] + list(out.shape)
    c_out = w.shape[1] * groups
    bias = b is not None and counter.count_bias
    mults, adds, macs = fm.conv_transpose_counts(in_shape, c_out, w.shape[2:], groups,
                                                 out_shape, bias)
    bwd = macs * (int(needs_grad(x)) + int(needs_grad(w)))
    counter.add(name, "conv", shape_of(x), shape_of(out), mults, adds, macs, bwd,
                prod(out_shape) if bias else 0)
    counter.rows[-1].extra.update(w_shape=shape_of(w), groups=groups, transposed=True,
                                  x_rg=needs_grad(x), w_rg=needs_grad(w))


def _linear_precheck(counter: Any, args, kwargs) -> None:
    x, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    if x.shape[-1] != w.shape[-1]:
        raise counter.fail(f"input has {x.shape[-1]} features, the layer expects {w.shape[-1]} "
                           f"(input shape {shape_of(x)}, weight shape {shape_of(w)})")


def _linear(counter: Any, name, args, kwargs, out) -> None:
    x, w, b = (arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"),
               arg(args, kwargs, 2, "bias"))
    in_shape = list(x.shape) if x.dim() > 1 else [1] + list(x.shape)
    bias = b is not None and counter.count_bias
    mults, adds, macs = fm.linear_counts(in_shape, w.shape[0], bias)
    bwd = macs * (int(needs_grad(x)) + int(needs_grad(w)))
    counter.add(name, "linear", shape_of(x), shape_of(out), mults, adds, macs, bwd,
                prod(out.shape) if bias else 0)


def _addmm(counter: Any, name, args, kwargs, out) -> None:
    m1, m2 = args[1], args[2]  # addmm(bias, m1, m2)
    mults, adds, macs = fm.matmul_counts(m1.shape, m2.shape, out.shape)
    bias_adds = prod(out.shape) if counter.count_bias else 0
    bwd = macs * (int(needs_grad(m1)) + int(needs_grad(m2)))
    counter.add(name, "linear", shape_of(m1), shape_of(out), mults, adds + bias_adds, macs, bwd,
                bias_adds)


def _matmul(counter: Any, name, args, kwargs, out) -> None:
    a, b = args[0], args[1]
    if name == "__rmatmul__":
        a, b = b, a
    mults, adds, macs = fm.matmul_counts(a.shape, b.shape, out.shape)
    bwd = macs * (int(needs_grad(a)) + int(needs_grad(b)))
    counter.add(name, "matmul", shape_of(a), shape_of(out), mults, adds, macs, bwd)


def _einsum(counter: Any, name, args, kwargs, out) -> None:
    eq = args[0]
    ops = args[1:] if not (len(args) == 2 and isinstance(args[1], (list, tuple))) else args[1]
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict = {}
    for term, t in zip(lhs, ops):
        for ch, n in zip(term, t.shape):
            sizes[ch] = n
    macs = prod(sizes.values())  # every index combination is one multiply-accumulate
    outputs = prod(out.shape) if out.dim() else 1
    bwd = macs * sum(int(needs_grad(t)) for t in ops)
    counter.add("einsum", "matmul", shape_of(ops[0]), shape_of(out), macs * (len(ops) - 1),
                macs - outputs, macs, bwd)


def _sdpa(counter: Any, name, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    mults, adds, macs = fm.attention_counts(q.shape, k.shape, v.shape)
    *batch, L, E = q.shape
    S, Ev = v.shape[-2], v.shape[-1]
    B = prod(batch)
    # backward: grad_attn = g v^T, grad_v = attn^T g, grad_q = ds k, grad_k = ds^T q (4 products;
    # the math path. Flash/efficient kernels also recompute q k^T: + L S E)
    bwd = B * L * S * (2 * E + 2 * Ev) if (needs_grad(q) or needs_grad(k) or needs_grad(v)) else 0
    counter.add(name, "attention", shape_of(q), shape_of(out), mults, adds, macs, bwd)


def _norm(counter: Any, name, args, kwargs, out) -> None:
    x = args[0]
    weight = kwargs.get("weight", args[2] if name == "layer_norm" and len(args) > 2 else None)
    if name == "batch_norm":
        weight = arg(args, kwargs, 3, "weight")
    elif name == "group_norm":
        weight = arg(args, kwargs, 2, "weight")
    elif name == "instance_norm":
        weight = arg(args, kwargs, 3, "weight")
    n = prod(x.shape)
    k = 2 if weight is not None else 1  # (x - mean) * inv_std [* gamma + beta]
    counter.add(name, "norm", shape_of(x), shape_of(out), n * k, n * k, 2 * n * k)


def _pool(counter: Any, name, args, kwargs, out) -> None:
    x = args[0]
    y = out[0] if isinstance(out, tuple) else out
    n_in, n_out = prod(x.shape), prod(y.shape)
    if "adaptive" in name:
        window = max(n_in // max(n_out, 1), 1)
    else:
        d = 1 if "1d" in name else 2 if "2d" in name else 3
        window = prod(_tup(arg(args, kwargs, 1, "kernel_size"), d))
    if "max" in name:  # comparisons only
        counter.add(name, "pool", shape_of(x), shape_of(y), 0, 0, n_out * (window - 1),
                    other=n_out * (window - 1))
    else:  # sum the window, divide once
        counter.add(name, "pool", shape_of(x), shape_of(y), n_out, n_out * (window - 1),
                    n_out * window)


_ADDS = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__rsub__",
         "__isub__"}
_MULS = {"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__",
         "__itruediv__", "__rtruediv__"}


def _elementwise(counter: Any, name, args, kwargs, out) -> None:
    if not isinstance(out, torch.Tensor):
        return
    n = prod(out.shape) if out.dim() else 1
    if name in _ADDS:
        counter.add(name, "elementwise", shape_of(args[0]), shape_of(out), 0, n, n)
    elif name in _MULS:
        counter.add(name, "elementwise", shape_of(args[0]), shape_of(out), n, 0, n)
    else:  # activations, softmax: one nonlinear op per element
        counter.add(name, "elementwise", shape_of(args[0]), shape_of(out), 0, 0, n, other=n)


def count_smooth_max_module(counter: Any, module: torch.nn.Module, x: torch.Tensor,
                            out: torch.Tensor) -> None:
    """SmoothMax / SmoothMaxPool2d (dnnlab.nn) as one row: each output reduces `window` entries
    (the counter calls this when a module with a `dnnlab_family` attribute returns)."""
    m = prod(out.shape) if out.dim() else 1
    if getattr(module, "kernel_size", None) is None:
        n = prod(x.shape)  # global pooling or a reduction: every entry once
    else:
        n = m * prod(module.kernel_size)
    _count_smooth_max(counter, (x,), out, n)


def _count_smooth_max(counter: Any, args, out, n: int | None = None) -> None:
    """nu_beta(x) = m + (1/beta) log sum exp(beta (x - m)) (docs/math.md (1a), m = max x).

    Forward: per entry a comparison (max), a subtraction, a multiplication by beta and an exp;
    per output the sum, a log, a multiplication by 1/beta and the add of m. Its backward,
    softmax(beta (x - m)) * grad (docs/math.md (1c)), is elementwise and is not a MAC family.
    """
    x = args[0]
    n, m = n or prod(x.shape), prod(out.shape) if out.dim() else 1
    mults = n + m  # beta (x - m) per entry, 1/beta per output
    adds = n + (n - m) + m  # x - m, the sum, + m
    other = n + n + m  # max comparisons, exp, log
    counter.add("smooth_max", "smooth_max", shape_of(x), shape_of(out), mults, adds,
                mults + adds + other, 0, other=other)
    counter.rows[-1].extra["entries"] = n


def _smooth_max(counter: Any, name, args, kwargs, out) -> None:  # dnnlab.functional.smooth_max
    _count_smooth_max(counter, args, out)


def _register_builtins() -> None:
    for d in ("1d", "2d", "3d"):
        register_handler("conv" + d, _conv, precheck=_conv_precheck)
        register_handler("conv_transpose" + d, _conv_transpose)
        for p in ("max_pool", "_max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool"):
            register_handler(p + d, _pool)
        register_handler("max_pool" + d + "_with_indices", _pool)
    register_handler("linear", _linear, precheck=_linear_precheck)
    register_handler("addmm", _addmm)
    for n in ("matmul", "__matmul__", "__rmatmul__", "mm", "bmm"):
        register_handler(n, _matmul)
    register_handler("einsum", _einsum)
    register_handler("smooth_max", _smooth_max)
    register_handler("scaled_dot_product_attention", _sdpa)
    for n in ("batch_norm", "layer_norm", "group_norm", "instance_norm"):
        register_handler(n, _norm)
    for n in sorted(_ADDS | _MULS | _NONLINEAR):
        register_handler(n, _elementwise)


_NONLINEAR = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
              "relu6", "hardtanh", "hardtanh_", "softmax", "log_softmax", "elu", "leaky_relu",
              "mish", "sigmoid_", "silu_", "hardswish_"}
_register_builtins()
