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
    if isinstance(v, (int, float)):
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


def _einsum_path(eq: str, ops) -> list | None:
    """The contraction path torch takes: opt_einsum's (3+ operands, when installed and
    enabled: torch.backends.opt_einsum), else None (left to right)."""
    ob = torch.backends.opt_einsum
    if len(ops) < 3 or not ob.enabled or not ob.is_available():
        return None
    import opt_einsum

    return [tuple(p) for p in opt_einsum.contract_path(eq, *[tuple(t.shape) for t in ops],
                                                       shapes=True, optimize=ob.strategy)[0]]


def _einsum(counter: Any, name, args, kwargs, out) -> None:
    eq = args[0]
    ops = args[1:] if not (len(args) == 2 and isinstance(args[1], (list, tuple))) else args[1]
    steps = fm.einsum_contractions(eq, [t.shape for t in ops], _einsum_path(eq, ops),
                                   [needs_grad(t) for t in ops])
    macs = sum(m for m, _, _ in steps)
    outputs = sum(o for _, o, _ in steps)
    bwd = sum(b for _, _, b in steps)
    counter.add("einsum", "matmul", shape_of(ops[0]), shape_of(out), macs, macs - outputs,
                macs, bwd)
    counter.rows[-1].extra["contractions"] = len(steps)


def _product(counter: Any, name: str, a, b, out, macs: int, outputs: int,
             family: str = "matmul", bias: bool = False) -> None:
    """A product of `macs` multiply-accumulates into `outputs` sums (+ a bias/input add)."""
    bias_adds = outputs if bias and counter.count_bias else 0
    bwd = macs * (int(needs_grad(a)) + int(needs_grad(b)))
    counter.add(name, family, shape_of(a), shape_of(out), macs, macs - outputs + bias_adds,
                macs, bwd, bias_adds)


def _baddbmm(counter: Any, name, args, kwargs, out) -> None:  # baddbmm(input, b1, b2)
    b1, b2 = arg(args, kwargs, 1, "batch1"), arg(args, kwargs, 2, "batch2")
    _product(counter, name, b1, b2, out, out.numel() * b1.shape[-1], out.numel(), bias=True)


def _addbmm(counter: Any, name, args, kwargs, out) -> None:  # sum_b batch1[b] @ batch2[b]
    b1, b2 = arg(args, kwargs, 1, "batch1"), arg(args, kwargs, 2, "batch2")
    macs = b1.shape[0] * b1.shape[1] * b1.shape[2] * b2.shape[2]
    _product(counter, name, b1, b2, out, macs, out.numel(), bias=True)


def _addmv(counter: Any, name, args, kwargs, out) -> None:  # addmv(input, mat, vec)
    m, v = arg(args, kwargs, 1, "mat"), arg(args, kwargs, 2, "vec")
    _product(counter, name, m, v, out, m.numel(), out.numel(), bias=True)


def _mv(counter: Any, name, args, kwargs, out) -> None:  # mv(mat, vec), dot, vdot: all of a
    a, b = args[0], args[1]
    _product(counter, name, a, b, out, a.numel(), max(out.numel(), 1))


def _inner(counter: Any, name, args, kwargs, out) -> None:  # sums over the last dim
    a, b = args[0], args[1]
    if a.dim() == 0 or b.dim() == 0:  # a scalar times a tensor: elementwise
        return _elementwise(counter, "mul", (a, b), {}, out)
    _product(counter, name, a, b, out, max(out.numel(), 1) * a.shape[-1], max(out.numel(), 1))


def _vecdot(counter: Any, name, args, kwargs, out) -> None:  # linalg.vecdot(x, y, dim=-1)
    a, b = args[0], args[1]
    dim = arg(args, kwargs, 2, "dim", -1)
    k = max(a.shape[dim], b.shape[dim])
    _product(counter, name, a, b, out, max(out.numel(), 1) * k, max(out.numel(), 1))


def _tensordot(counter: Any, name, args, kwargs, out) -> None:
    a, b = args[0], args[1]
    dims = arg(args, kwargs, 2, "dims", 2)
    if isinstance(dims, torch.Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        k = prod(a.shape[a.dim() - dims:])
    else:
        da = dims[0] if isinstance(dims[0], (list, tuple)) else [dims[0]]
        k = prod(a.shape[d] for d in da)
    _product(counter, name, a, b, out, max(out.numel(), 1) * k, max(out.numel(), 1))


def _multi_dot(counter: Any, name, args, kwargs, out) -> None:  # linalg.multi_dot, chain_matmul
    ts = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
    dims = [1 if ts[0].dim() == 1 else ts[0].shape[0]] + [t.shape[-1] if t.dim() == 2 else 1
                                                          for t in ts]
    if ts[-1].dim() == 1:  # a column vector
        dims[-1] = 1
    if ts[0].dim() == 1:
        dims[1] = ts[0].shape[0]
    macs = fm.matrix_chain_macs(dims)
    outputs = sum(1 for _ in ts[1:]) and max(out.numel(), 1)  # the last product's outputs
    grads = sum(int(needs_grad(t)) for t in ts)
    counter.add(name, "matmul", shape_of(ts[0]), shape_of(out), macs, macs - outputs, macs,
                2 * macs if grads else 0)


def _outer(counter: Any, name, args, kwargs, out) -> None:  # outer, ger, kron, addr: no sums
    counter.add(name, "elementwise", shape_of(args[0]), shape_of(out), out.numel(),
                out.numel() if name == "addr" else 0, out.numel())


def _convolution(counter: Any, name, args, kwargs, out) -> None:
    """torch.convolution / torch._convolution(input, weight, bias, stride, padding, dilation,
    transposed, output_padding, groups, ...): the conv handlers with their argument order."""
    x, w, b = args[0], args[1], arg(args, kwargs, 2, "bias")
    stride, pad, dil = args[3], args[4], args[5]
    transposed, opad, groups = args[6], args[7], args[8]
    if transposed:
        _conv_transpose(counter, name, (x, w, b, stride, pad, opad, groups, dil), {}, out)
    else:
        _conv(counter, name, (x, w, b, stride, pad, dil, groups), {}, out)


def _bilinear(counter: Any, name, args, kwargs, out) -> None:
    """y_o = x1^T W_o x2 + b_o (F.bilinear): torch's _trilinear first multiplies x1 into W
    (N O I1 I2 MACs), then the result by x2 (N O I2 MACs)."""
    x1, w, b = args[0], args[2], arg(args, kwargs, 3, "bias")
    n, (o, i1, i2) = prod(x1.shape[:-1]), w.shape
    macs = n * o * i2 * (i1 + 1)
    _product(counter, name, x1, w, out, macs, n * o, bias=b is not None)


# -- recurrent layers: nn.RNN / nn.LSTM / nn.GRU (torch._VF.lstm, ...) and their cells ------

def _rnn_call(name: str, args, kwargs):
    """(input, hx, weights, has_biases, layers, bidirectional, batch_first, batch_sizes) of a
    _VF.lstm/gru/rnn_* call, padded or packed (PackedSequence: data, batch_sizes)."""
    packed = isinstance(args[3], (list, tuple))  # the weights come 4th, after batch_sizes
    if packed:  # (data, batch_sizes, hx, weights, bias, layers, dropout, train, bidirectional)
        x, bs, hx, ws, bias, layers, _, _, bidir = args[:9]
        return x, hx, list(ws), bias, layers, bidir, False, bs
    x, hx, ws, bias, layers, _, _, bidir, batch_first = args[:9]
    return x, hx, list(ws), bias, layers, bidir, batch_first, None


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _rnn_layout(name: str, args, kwargs):
    x, hx, ws, bias, layers, bidir, batch_first, bs = _rnn_call(name, args, kwargs)
    d = 2 if bidir else 1
    per = len(ws) // (layers * d)  # w_ih, w_hh[, b_ih, b_hh][, w_hr]
    groups = [ws[i * per:(i + 1) * per] for i in range(layers * d)]
    mats = [[g[0], g[1]] + ([g[-1]] if per in (3, 5) else []) for g in groups]
    return x, bs, batch_first, d, layers, mats


def rnn_shortcut(name: str):
    """The outputs of a recurrent layer, made from the shapes alone (meta: nothing to run)."""
    def make(args, kwargs):
        x, bs, batch_first, d, layers, mats = _rnn_layout(name, args, kwargs)
        h_out = mats[0][1].shape[1]  # W_hh: (G H, H_out)
        hidden = mats[0][1].shape[0] // fm.RNN_GATES[name]
        rg = any(t.requires_grad for m in mats for t in m) or x.requires_grad

        def empty(*shape):
            return torch.empty(shape, device="meta", dtype=x.dtype, requires_grad=rg).clone()
        if bs is not None:
            batch, y = int(bs[0]), empty(x.shape[0], d * h_out)
        else:
            batch = x.shape[0] if batch_first else x.shape[1]
            y = empty(*x.shape[:2], d * h_out)
        h = empty(d * layers, batch, h_out)
        return (y, h, empty(d * layers, batch, hidden)) if name == "lstm" else (y, h)
    return make


def _rnn(counter: Any, name, args, kwargs, out) -> None:
    x, bs, batch_first, d, layers, mats = _rnn_layout(name, args, kwargs)
    hx = _rnn_call(name, args, kwargs)[1]
    rows = x.shape[0] if bs is not None else x.shape[0] * x.shape[1]  # steps x batch
    h_out = mats[0][1].shape[1]
    macs = sum(fm.rnn_macs(rows, m) for m in mats)
    outputs = sum(rows * (m[0].shape[0] * 2 + (m[2].shape[0] if len(m) > 2 else 0))
                  for m in mats)
    # backward: the input and weight gradient of every product, except the gradients of what
    # needs none: the network input (layer 0's W_ih x) and the initial hidden state (W_hh h_0 of
    # each layer and direction's first step, when h_0 is zeros or does not require grad)
    first_ih = sum(rows * prod(mats[i][0].shape) for i in range(d))
    if bs is not None:
        first = [int(bs[0]), int(bs[-1])]
    else:
        first = [x.shape[0] if batch_first else x.shape[1]] * 2
    h0 = sum(first[i % d] * prod(m[1].shape) for i, m in enumerate(mats))
    bwd = (2 * macs - (0 if needs_grad(x) else first_ih)
           - (0 if any(needs_grad(h) for h in _as_list(hx)) else h0))
    y = out[0]
    counter.add(name, "recurrent", shape_of(x), shape_of(y), macs, macs - outputs, macs, bwd)
    counter.rows[-1].extra.update(layers=layers, directions=d, hidden_out=h_out)


def _rnn_cell(counter: Any, name, args, kwargs, out) -> None:
    """lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh), gru_cell/rnn_*_cell(x, h, w_ih, w_hh, ...):
    one step, B (G H I + G H H) MACs."""
    x, w_ih, w_hh = args[0], args[2], args[3]
    rows = prod(x.shape[:-1]) if x.dim() > 1 else 1
    macs = fm.rnn_macs(rows, [w_ih, w_hh])
    outputs = 2 * rows * w_ih.shape[0]
    hx = args[1]
    bwd = (2 * macs - (0 if needs_grad(x) else rows * prod(w_ih.shape))
           - (0 if any(needs_grad(h) for h in _as_list(hx)) else rows * prod(w_hh.shape)))
    y = out[0] if isinstance(out, tuple) else out
    counter.add(name, "recurrent", shape_of(x), shape_of(y), macs, macs - outputs, macs, bwd)


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


# -- shortcuts: outputs made from shapes on meta, for ops whose meta kernels are slow Python
# decompositions (norms, linear on 3-d inputs, interpolate, grid_sample): same counts, the
# output a meta tensor of the shape, dtype and layout torch gives.

def _rg(args, kwargs) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad
        for t in list(args) + list(kwargs.values()))


def _meta_out(x: torch.Tensor, shape, rg: bool) -> torch.Tensor:
    fmt = (torch.channels_last if x.dim() == 4 and len(shape) == 4
           and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
           else torch.contiguous_format)
    out = torch.empty(shape, device="meta", dtype=x.dtype, memory_format=fmt)
    return out.requires_grad_().clone() if rg else out


def _same_shape(args, kwargs):
    x = args[0]
    return _meta_out(x, x.shape, _rg(args, kwargs))


def _linear_shape(args, kwargs):
    x, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    return _meta_out(x, list(x.shape[:-1]) + [w.shape[0]], _rg(args, kwargs))


def _interpolate_shape(args, kwargs):
    x = args[0]
    d = x.dim() - 2
    size, scale = arg(args, kwargs, 1, "size"), arg(args, kwargs, 2, "scale_factor")
    if size is not None:
        out = _tup(size, d)
    else:
        from math import floor

        out = [floor(float(x.shape[2 + i]) * float(s)) for i, s in enumerate(_tup(scale, d))]
    return _meta_out(x, list(x.shape[:2]) + [int(n) for n in out], _rg(args, kwargs))


def _grid_sample_shape(args, kwargs):
    x, grid = args[0], arg(args, kwargs, 1, "grid")
    return _meta_out(x, list(x.shape[:2]) + list(grid.shape[1:-1]), _rg(args, kwargs))


def _resample(counter: Any, name, args, kwargs, out) -> None:
    """interpolate / grid_sample: one operation per output element (elementwise family; the
    interpolation weights are not itemized)."""
    n = out.numel()
    counter.add(name, "elementwise", shape_of(args[0]), shape_of(out), 0, 0, n, other=n)


def _register_builtins() -> None:
    for d in ("1d", "2d", "3d"):
        register_handler("conv" + d, _conv, precheck=_conv_precheck)
        register_handler("conv_transpose" + d, _conv_transpose)
        for p in ("max_pool", "_max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool"):
            register_handler(p + d, _pool)
        register_handler("max_pool" + d + "_with_indices", _pool)
    register_handler("linear", _linear, precheck=_linear_precheck, shortcut=_linear_shape)
    register_handler("interpolate", _resample, shortcut=_interpolate_shape)
    register_handler("grid_sample", _resample, shortcut=_grid_sample_shape)
    register_handler("addmm", _addmm)
    for n in ("matmul", "__matmul__", "__rmatmul__", "mm", "bmm"):
        register_handler(n, _matmul)
    register_handler("einsum", _einsum)
    register_handler("baddbmm", _baddbmm)
    register_handler("addbmm", _addbmm)
    register_handler("addmv", _addmv)
    for n in ("mv", "dot", "vdot"):
        register_handler(n, _mv)
    register_handler("inner", _inner)
    register_handler("linalg_vecdot", _vecdot)
    register_handler("tensordot", _tensordot)
    for n in ("linalg_multi_dot", "multi_dot", "chain_matmul"):
        register_handler(n, _multi_dot)
    for n in ("outer", "ger", "kron", "addr"):
        register_handler(n, _outer)
    for n in ("convolution", "_convolution"):
        register_handler(n, _convolution)
    register_handler("bilinear", _bilinear)
    register_handler("_scaled_mm", _matmul)
    for n in fm.RNN_GATES:
        register_handler(n, _rnn, shortcut=rnn_shortcut(n))
        register_handler(n + "_cell", _rnn_cell)
    register_handler("flex_attention", _sdpa)
    register_handler("smooth_max", _smooth_max)
    register_handler("scaled_dot_product_attention", _sdpa)
    for n in ("batch_norm", "layer_norm", "group_norm", "instance_norm"):
        register_handler(n, _norm, shortcut=_same_shape)
    for n in sorted(_ADDS | _MULS | _NONLINEAR):
        register_handler(n, _elementwise)


_NONLINEAR = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
              "relu6", "hardtanh", "hardtanh_", "softmax", "log_softmax", "elu", "leaky_relu",
              "mish", "sigmoid_", "silu_", "hardswish_", "exp", "exp_", "log", "log2", "sqrt",
              "rsqrt", "pow", "__pow__", "__rpow__", "square", "abs", "neg", "__neg__", "erf",
              "clamp", "clamp_", "clip", "floor", "ceil", "round", "reciprocal", "sin", "cos",
              "softplus", "logsigmoid", "glu", "eq", "ne", "ge", "gt", "le", "lt", "__eq__",
              "__ne__", "__ge__", "__gt__", "__le__", "__lt__", "__and__", "__or__",
              "logical_and", "logical_or", "logical_not", "minimum", "maximum"}
_register_builtins()


# What dnnlab counts for each op torch.utils.flop_counter.FlopCounterMode has a formula for
# (tests/opcount/test_products.py fails on an op that is not here): the handlers of the Python
# calls that reach it, or "backward" (bwd_macs).
ATEN_COVERAGE = {
    "mm": ["mm", "matmul", "linear", "inner", "tensordot", "linalg_multi_dot", "lstm", "gru",
           "rnn_tanh", "rnn_relu"],
    "addmm": ["addmm", "linear", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"],
    "bmm": ["bmm", "matmul", "einsum", "scaled_dot_product_attention"],
    "baddbmm": ["baddbmm"],
    "_scaled_mm": ["_scaled_mm"],
    "convolution": ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                    "conv_transpose3d", "convolution"],
    "_convolution": ["_convolution"],
    "convolution_overrideable": ["convolution"],
    "cudnn_convolution": ["conv2d", "convolution"],
    "_slow_conv2d_forward": ["conv2d"],
    "convolution_backward": ["backward"],
    **{f"_scaled_dot_product_{k}_attention": ["scaled_dot_product_attention"]
       for k in ("flash", "efficient", "cudnn")},
    **{f"_{k}_attention_forward": ["scaled_dot_product_attention"]
       for k in ("flash", "efficient")},
    **{f"_scaled_dot_product_{k}_attention_backward": ["backward"]
       for k in ("flash", "efficient", "cudnn")},
    **{f"_{k}_attention_backward": ["backward"] for k in ("flash", "efficient")},
    "flex_attention": ["flex_attention"],
    "flex_attention_backward": ["backward"],
}
