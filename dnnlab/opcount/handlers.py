"""The built-in handlers of the counter: how each torch call is counted (docs/math.md (2)).

Each handler is a pure `handler(args, kwargs, out) -> Count` (`dnnlab.opcount.protocol`) and
says beside its body which calls it counts: `@handles("conv1d", "conv2d", ...)` (as torch's
`@register_flop_formula` does for aten ops). A name stands for every torch function of that
name (`torch.conv2d`, `F.conv2d`, `Tensor.conv2d`, ...); any other key (a dnnlab function or
module class, a higher-order op) is itself the key. `@handles_each(names...)` registers a
handler factory once per name. `builtins()` is the table they declare, keyed by function object.
Conv and linear follow the closed forms of `formulas.py`; backward MACs follow docs/math.md (3b)
(input gradient by transposed convolution, weight gradient by correlation, each the forward's
MACs).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from math import prod
from typing import Any

import torch
from torch._higher_order_ops.flex_attention import flex_attention as _flex_hop

from dnnlab.opcount import formulas as fm
from dnnlab.opcount.dispatch import block_pairs
from dnnlab.opcount.names import torch_functions
from dnnlab.opcount.protocol import (
    Count,
    CountError,
    Entry,
    Precheck,
    Shortcut,
    arg,
    needs_grad,
    shape_of,
)
from dnnlab.smoothmax.functional import smooth_max
from dnnlab.smoothmax.modules import SmoothMax, SmoothMaxPool2d

# What the decorators below declare, in source order: (keys, Entry). A key is a torch function
# name (every function object of that name) or an object that is its own key.
DECLARED: list[tuple[tuple, Entry]] = []


def handles(*keys: Any, precheck: Precheck | None = None, shortcut: Shortcut | None = None):
    """Declare the decorated handler as the built-in count of `keys` (names or objects)."""
    def register(handler):
        DECLARED.append((keys, Entry(handler, precheck, shortcut)))
        return handler
    return register


def handles_each(*names: str, shortcut: Shortcut | None = None,
                 shortcut_of: Callable[[str], Shortcut] | None = None):
    """Declare the decorated factory `factory(name) -> handler` once per name (its shortcut:
    `shortcut`, or `shortcut_of(name)`)."""
    def register(factory):
        for n in names:
            DECLARED.append(((n,), Entry(factory(n), None,
                                         shortcut_of(n) if shortcut_of else shortcut)))
        return factory
    return register


def builtins() -> dict:
    """The built-in table: {torch function object (or dnnlab module class, or op): Entry}."""
    out: dict = {}
    for keys, entry in DECLARED:
        for key in keys:
            objs = torch_functions().get(key, ()) if isinstance(key, str) else (key,)
            for f in objs:
                out[f] = entry
    return out


def _tup(v: Any, n: int) -> tuple:
    if isinstance(v, (int, float)):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


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


def _conv_precheck(args, kwargs) -> None:
    x, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    d = w.dim() - 2
    groups = arg(args, kwargs, 6, "groups", 1)
    batched = x.dim() == d + 2
    if x.dim() not in (d + 1, d + 2):
        raise CountError(f"expected a {d + 2}-d input (N, C, *spatial), got shape {shape_of(x)}")
    c_in = x.shape[1] if batched else x.shape[0]
    if not batched and c_in != w.shape[1] * groups:  # torch would read [1, 3, 224] as C=1
        raise CountError(f"expects {d + 2}-d input (N, C={w.shape[1] * groups}, *spatial), got "
                         f"the {d + 1}-d shape {shape_of(x)}")
    if c_in != w.shape[1] * groups:
        raise CountError(f"input has {c_in} channels, the layer expects {w.shape[1] * groups} "
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
            raise CountError(
                f"input of shape {shape_of(x)} is too small: kernel {w.shape[2 + i]} "
                f"(dilation {dil[i]}) on padded length {spatial[i] + 2 * pad[i]} gives an "
                f"output of length {n}")


@handles("conv1d", "conv2d", "conv3d", precheck=_conv_precheck)
def _conv(args, kwargs, out) -> Count:
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
        raise CountError(f"output shape {shape_of(out)} disagrees with the formula {expect}")
    out_shape = list(out.shape) if out.dim() == d + 2 else [1] + list(out.shape)
    c_in = x.shape[-d - 1]
    bias = b is not None
    mults, adds, macs = fm.conv_counts(out_shape, c_in, w.shape[2:], groups, bias)
    # docs/math.md (3b): input grad by transposed conv, weight grad by correlation
    bwd = macs * (int(needs_grad(x)) + int(needs_grad(w)))
    extra = dict(w_shape=shape_of(w), groups=groups, transposed=False, x_rg=needs_grad(x),
                 w_rg=needs_grad(w))
    if isinstance(arg(args, kwargs, 4, "padding", 0), str):
        extra["string_padding"] = True
    return Count("conv", mults, adds, macs, bwd, prod(out_shape) if bias else 0,
                 in_shape=shape_of(x), extra=extra)


@handles("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_transpose(args, kwargs, out) -> Count:
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
        raise CountError(f"output shape {shape_of(out)} disagrees with the formula {expect}")
    in_shape = list(x.shape) if x.dim() == d + 2 else [1] + list(x.shape)
    out_shape = list(out.shape) if out.dim() == d + 2 else [1] + list(out.shape)
    c_out = w.shape[1] * groups
    bias = b is not None
    mults, adds, macs = fm.conv_transpose_counts(in_shape, c_out, w.shape[2:], groups,
                                                 out_shape, bias)
    bwd = macs * (int(needs_grad(x)) + int(needs_grad(w)))
    return Count("conv", mults, adds, macs, bwd, prod(out_shape) if bias else 0,
                 in_shape=shape_of(x),
                 extra=dict(w_shape=shape_of(w), groups=groups, transposed=True,
                            x_rg=needs_grad(x), w_rg=needs_grad(w)))


def _linear_precheck(args, kwargs) -> None:
    x, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    if x.shape[-1] != w.shape[-1]:
        raise CountError(f"input has {x.shape[-1]} features, the layer expects {w.shape[-1]} "
                           f"(input shape {shape_of(x)}, weight shape {shape_of(w)})")


@handles("linear", precheck=_linear_precheck, shortcut=_linear_shape)
def _linear(args, kwargs, out) -> Count:
    x, w, b = (arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"),
               arg(args, kwargs, 2, "bias"))
    in_shape = list(x.shape) if x.dim() > 1 else [1] + list(x.shape)
    bias = b is not None
    mults, adds, macs = fm.linear_counts(in_shape, w.shape[0], bias)
    bwd = macs * (int(needs_grad(x)) + int(needs_grad(w)))
    return Count("linear", mults, adds, macs, bwd, prod(out.shape) if bias else 0,
                 in_shape=shape_of(x))


@handles("addmm")
def _addmm(args, kwargs, out) -> Count:
    m1, m2 = args[1], args[2]  # addmm(bias, m1, m2)
    mults, adds, macs = fm.matmul_counts(m1.shape, m2.shape, out.shape)
    bias_adds = prod(out.shape)
    bwd = macs * (int(needs_grad(m1)) + int(needs_grad(m2)))
    return Count("linear", mults, adds + bias_adds, macs, bwd, bias_adds, in_shape=shape_of(m1))


@handles("matmul", "__matmul__", "mm", "bmm", "_scaled_mm")
def _matmul(args, kwargs, out) -> Count:
    a, b = args[0], args[1]
    mults, adds, macs = fm.matmul_counts(a.shape, b.shape, out.shape)
    bwd = macs * (int(needs_grad(a)) + int(needs_grad(b)))
    return Count("matmul", mults, adds, macs, bwd, in_shape=shape_of(a))


@handles("__rmatmul__")
def _rmatmul(args, kwargs, out) -> Count:  # b.__rmatmul__(a) = a @ b
    return _matmul((args[1], args[0]), kwargs, out)


def _einsum_path(eq: str, ops) -> list | None:
    """The contraction path torch takes: opt_einsum's (3+ operands, when installed and
    enabled: torch.backends.opt_einsum), else None (left to right)."""
    ob = torch.backends.opt_einsum
    if len(ops) < 3 or not ob.enabled or not ob.is_available():
        return None
    import opt_einsum

    return [tuple(p) for p in opt_einsum.contract_path(eq, *[tuple(t.shape) for t in ops],
                                                       shapes=True, optimize=ob.strategy)[0]]


@handles("einsum")
def _einsum(args, kwargs, out) -> Count:
    eq = args[0]
    ops = args[1:] if not (len(args) == 2 and isinstance(args[1], (list, tuple))) else args[1]
    steps = fm.einsum_contractions(eq, [t.shape for t in ops], _einsum_path(eq, ops),
                                   [needs_grad(t) for t in ops])
    macs = sum(m for m, _, _ in steps)
    outputs = sum(o for _, o, _ in steps)
    bwd = sum(b for _, _, b in steps)
    return Count("matmul", macs, macs - outputs, macs, bwd, op="einsum", in_shape=shape_of(ops[0]),
                 extra={"contractions": len(steps)})


def _product(a, b, out, macs: int, outputs: int, family: str = "matmul",
             bias: bool = False) -> Count:
    """A product of `macs` multiply-accumulates into `outputs` sums (+ a bias/input add)."""
    bias_adds = outputs if bias else 0
    bwd = macs * (int(needs_grad(a)) + int(needs_grad(b)))
    return Count(family, macs, macs - outputs + bias_adds, macs, bwd, bias_adds,
                 in_shape=shape_of(a))


@handles("baddbmm")
def _baddbmm(args, kwargs, out) -> Count:  # baddbmm(input, b1, b2)
    b1, b2 = arg(args, kwargs, 1, "batch1"), arg(args, kwargs, 2, "batch2")
    return _product(b1, b2, out, out.numel() * b1.shape[-1], out.numel(), bias=True)


@handles("addbmm")
def _addbmm(args, kwargs, out) -> Count:  # sum_b batch1[b] @ batch2[b]
    b1, b2 = arg(args, kwargs, 1, "batch1"), arg(args, kwargs, 2, "batch2")
    macs = b1.shape[0] * b1.shape[1] * b1.shape[2] * b2.shape[2]
    return _product(b1, b2, out, macs, out.numel(), bias=True)


@handles("addmv")
def _addmv(args, kwargs, out) -> Count:  # addmv(input, mat, vec)
    m, v = arg(args, kwargs, 1, "mat"), arg(args, kwargs, 2, "vec")
    return _product(m, v, out, m.numel(), out.numel(), bias=True)


@handles("mv", "dot", "vdot")
def _mv(args, kwargs, out) -> Count:  # mv(mat, vec), dot, vdot: all of a
    a, b = args[0], args[1]
    return _product(a, b, out, a.numel(), max(out.numel(), 1))


@handles("inner")
def _inner(args, kwargs, out) -> Count:  # sums over the last dim
    a, b = args[0], args[1]
    if a.dim() == 0 or b.dim() == 0:  # a scalar times a tensor: elementwise
        return _elementwise("mul")((a, b), {}, out)
    return _product(a, b, out, max(out.numel(), 1) * a.shape[-1], max(out.numel(), 1))


@handles("linalg_vecdot")
def _vecdot(args, kwargs, out) -> Count:  # linalg.vecdot(x, y, dim=-1)
    a, b = args[0], args[1]
    dim = arg(args, kwargs, 2, "dim", -1)
    k = max(a.shape[dim], b.shape[dim])
    return _product(a, b, out, max(out.numel(), 1) * k, max(out.numel(), 1))


@handles("tensordot")
def _tensordot(args, kwargs, out) -> Count:
    a, b = args[0], args[1]
    dims = arg(args, kwargs, 2, "dims", 2)
    if isinstance(dims, torch.Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        k = prod(a.shape[a.dim() - dims:])
    else:
        da = dims[0] if isinstance(dims[0], (list, tuple)) else [dims[0]]
        k = prod(a.shape[d] for d in da)
    return _product(a, b, out, max(out.numel(), 1) * k, max(out.numel(), 1))


@handles("linalg_multi_dot", "chain_matmul")
def _multi_dot(args, kwargs, out) -> Count:  # linalg.multi_dot, chain_matmul
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
    return Count("matmul", macs, macs - outputs, macs, 2 * macs if grads else 0,
                 in_shape=shape_of(ts[0]))


@handles("outer", "ger", "kron")
def _outer(args, kwargs, out) -> Count:  # outer, ger, kron: no sums
    return Count("elementwise", out.numel(), 0, out.numel(), in_shape=shape_of(args[0]))


@handles("addr")
def _addr(args, kwargs, out) -> Count:  # addr(input, v1, v2): the outer product + input
    return Count("elementwise", out.numel(), out.numel(), out.numel(), in_shape=shape_of(args[0]))


@handles("convolution", "_convolution")
def _convolution(args, kwargs, out) -> Count:
    """torch.convolution / torch._convolution(input, weight, bias, stride, padding, dilation,
    transposed, output_padding, groups, ...): the conv handlers with their argument order."""
    x, w, b = args[0], args[1], arg(args, kwargs, 2, "bias")
    stride, pad, dil = args[3], args[4], args[5]
    transposed, opad, groups = args[6], args[7], args[8]
    if transposed:
        return _conv_transpose((x, w, b, stride, pad, opad, groups, dil), {}, out)
    return _conv((x, w, b, stride, pad, dil, groups), {}, out)


@handles("bilinear")
def _bilinear(args, kwargs, out) -> Count:
    """y_o = x1^T W_o x2 + b_o (F.bilinear): torch's _trilinear first multiplies x1 into W
    (N O I1 I2 MACs), then the result by x2 (N O I2 MACs)."""
    x1, w, b = args[0], args[2], arg(args, kwargs, 3, "bias")
    n, (o, i1, i2) = prod(x1.shape[:-1]), w.shape
    macs = n * o * i2 * (i1 + 1)
    return _product(x1, w, out, macs, n * o, bias=b is not None)


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


@handles_each(*fm.RNN_GATES, shortcut_of=rnn_shortcut)
def _rnn(name: str):
    """The handler of the recurrent layer `name` (lstm, gru, rnn_tanh, rnn_relu)."""
    return lambda args, kwargs, out: _rnn_count(name, args, kwargs, out)


def _rnn_count(name: str, args, kwargs, out) -> Count:
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
    return Count("recurrent", macs, macs - outputs, macs, bwd, in_shape=shape_of(x),
                 extra=dict(layers=layers, directions=d, hidden_out=h_out))


@handles(*[n + "_cell" for n in fm.RNN_GATES])
def _rnn_cell(args, kwargs, out) -> Count:
    """lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh), gru_cell/rnn_*_cell(x, h, w_ih, w_hh, ...):
    one step, B (G H I + G H H) MACs."""
    x, w_ih, w_hh = args[0], args[2], args[3]
    rows = prod(x.shape[:-1]) if x.dim() > 1 else 1
    macs = fm.rnn_macs(rows, [w_ih, w_hh])
    outputs = 2 * rows * w_ih.shape[0]
    hx = args[1]
    bwd = (2 * macs - (0 if needs_grad(x) else rows * prod(w_ih.shape))
           - (0 if any(needs_grad(h) for h in _as_list(hx)) else rows * prod(w_hh.shape)))
    return Count("recurrent", macs, macs - outputs, macs, bwd, in_shape=shape_of(x))


@handles("scaled_dot_product_attention")
def _sdpa(args, kwargs, out) -> Count:
    q, k, v = args[0], args[1], args[2]
    mults, adds, macs = fm.attention_counts(q.shape, k.shape, v.shape)
    *batch, L, E = q.shape
    S, Ev = v.shape[-2], v.shape[-1]
    B = prod(batch)
    # backward: grad_attn = g v^T, grad_v = attn^T g, grad_q = ds k, grad_k = ds^T q (4 products;
    # the math path. Flash/efficient kernels also recompute q k^T: + L S E)
    bwd = B * L * S * (2 * E + 2 * Ev) if (needs_grad(q) or needs_grad(k) or needs_grad(v)) else 0
    pairs = _unmasked_pairs(L, S, arg(args, kwargs, 3, "attn_mask"),
                            arg(args, kwargs, 5, "is_causal", False), batch)
    return _attention(q, v, mults, adds, macs, bwd, pairs, B * L * S)


def _attention(q, v, mults, adds, macs, bwd, pairs, dense_pairs, extra=None) -> Count:
    """An attention row: dense counts, the unmasked pairs' counts when known (`pairs`), and
    the q k^T product a recomputing backward adds (`attention_backward="recompute"`)."""
    E, Ev = q.shape[-1], v.shape[-1]
    extra = dict(extra or {}, recompute_bwd_macs=dense_pairs * E)
    if pairs is None:  # dense is exact (no mask), or a mask whose values cannot be seen
        return Count("attention", mults, adds, macs, bwd, in_shape=shape_of(q), extra=extra)
    per_pair_bwd = 2 * E + 2 * Ev if bwd else 0
    extra["recompute_causal_bwd_macs"] = pairs * E
    return Count("attention", mults, adds, macs, bwd, in_shape=shape_of(q),
                 causal_macs=pairs * (E + Ev), causal_bwd_macs=pairs * per_pair_bwd,
                 extra=extra)


@handles(_flex_hop)  # a higher-order op: counted at the dispatch level (dispatch.py)
def _flex(args, kwargs, out) -> Count:
    """The flex_attention higher-order op (query, key, value, score_mod, block_mask tuple,
    ...), counted at the dispatch level: dense as SDPA (q k^T and (attn) v, FlopCounterMode's
    formula), and with a BlockMask the pairs of the blocks it computes (`dispatch.
    block_pairs`, exact) beside it. score_mod's elementwise work is not itemized."""
    q, k, v = args[0], args[1], args[2]
    mults, adds, macs = fm.attention_counts(q.shape, k.shape, v.shape)
    *batch, L, E = q.shape
    S, Ev = v.shape[-2], v.shape[-1]
    B = prod(batch)
    bwd = B * L * S * (2 * E + 2 * Ev) if (needs_grad(q) or needs_grad(k) or needs_grad(v)) else 0
    pairs = block_pairs(args[4], q.shape[0] if q.dim() == 4 else 1,
                        q.shape[-3] if q.dim() >= 3 else 1, L, S)
    if pairs == B * L * S:  # every block computed (no mask): dense is exact
        pairs = None
    c = _attention(q, v, mults, adds, macs, bwd, pairs, B * L * S)
    return replace(c, op="flex_attention")


def _unmasked_pairs(L: int, S: int, mask: Any, is_causal: bool, batch: list) -> int | None:
    """How many (query, key) products a masked attention needs, over the whole batch
    (docs/opcount.md "Causal attention"): is_causal keeps key j <= query i (torch's top-left
    triangle), sum_i min(i + 1, S); a boolean mask its True entries, a float mask its entries
    above -inf, broadcast over the batch. None: no mask, or a mask on meta (values unseen)."""
    B = prod(batch)
    if is_causal:
        return B * sum(min(i + 1, S) for i in range(L))
    if not isinstance(mask, torch.Tensor) or mask.is_meta:
        return None
    keep = mask if mask.dtype == torch.bool else mask > float("-inf")
    keep = keep.expand(*batch, L, S) if keep.dim() <= len(batch) + 2 else keep
    return int(keep.sum())


@handles_each("batch_norm", "layer_norm", "group_norm", "instance_norm", shortcut=_same_shape)
def _norm(name: str):
    """The handler of batch/layer/group/instance norm."""
    return lambda args, kwargs, out: _norm_count(name, args, kwargs, out)


def _norm_count(name: str, args, kwargs, out) -> Count:
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
    return Count("norm", n * k, n * k, 2 * n * k, in_shape=shape_of(x))


_POOLS = [n for d in ("1d", "2d", "3d") for n in (
    f"max_pool{d}", f"_max_pool{d}", f"avg_pool{d}", f"adaptive_avg_pool{d}",
    f"adaptive_max_pool{d}", f"max_pool{d}_with_indices")]


@handles_each(*_POOLS)
def _pool(name: str):
    """The handler of the pooling function `name` (max/avg, adaptive, 1d/2d/3d)."""
    return lambda args, kwargs, out: _pool_count(name, args, kwargs, out)


def _pool_count(name: str, args, kwargs, out) -> Count:
    x = args[0]
    y = out[0] if isinstance(out, tuple) else out
    n_in, n_out = prod(x.shape), prod(y.shape)
    if "adaptive" in name:
        window = max(n_in // max(n_out, 1), 1)
    else:
        d = 1 if "1d" in name else 2 if "2d" in name else 3
        window = prod(_tup(arg(args, kwargs, 1, "kernel_size"), d))
    if "max" in name:  # comparisons only
        return Count("pool", 0, 0, n_out * (window - 1), other=n_out * (window - 1),
                     in_shape=shape_of(x))
    return Count("pool", n_out, n_out * (window - 1), n_out * window,  # sum, divide once
                 in_shape=shape_of(x))


_ADDS = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__rsub__",
         "__isub__"}
_MULS = {"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__",
         "__itruediv__", "__rtruediv__"}

_NONLINEAR = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
              "relu6", "hardtanh", "hardtanh_", "softmax", "log_softmax", "elu", "leaky_relu",
              "mish", "sigmoid_", "silu_", "hardswish_", "exp", "exp_", "log", "log2", "sqrt",
              "rsqrt", "pow", "__pow__", "__rpow__", "square", "abs", "neg", "__neg__", "erf",
              "clamp", "clamp_", "clip", "floor", "ceil", "round", "reciprocal", "sin", "cos",
              "softplus", "logsigmoid", "log_sigmoid", "glu", "eq", "ne", "ge", "gt", "le", "lt",
              "__eq__", "__ne__", "__ge__", "__gt__", "__le__", "__lt__", "__and__", "__or__",
              "logical_and", "logical_or", "logical_not", "minimum", "maximum"}


@handles_each(*sorted(_ADDS | _MULS | _NONLINEAR))
def _elementwise(name: str):
    """The handler of an elementwise op: adds (add, sub), mults (mul, div), or one nonlinear
    operation per element (activations, softmax, comparisons)."""
    kind = "adds" if name in _ADDS else "mults" if name in _MULS else "other"

    def count(args, kwargs, out) -> Count | None:
        if not isinstance(out, torch.Tensor):
            return None
        n = prod(out.shape) if out.dim() else 1
        if kind == "adds":
            return Count("elementwise", 0, n, n, in_shape=shape_of(args[0]))
        if kind == "mults":
            return Count("elementwise", n, 0, n, in_shape=shape_of(args[0]))
        return Count("elementwise", 0, 0, n, other=n, in_shape=shape_of(args[0]))
    return count


def smooth_max_count(x: torch.Tensor, out: torch.Tensor, n: int | None = None) -> Count:
    """nu_beta(x) = m + (1/beta) log sum exp(beta (x - m)) (docs/math.md (1a), m = max x),
    `n` entries reduced in all (default: every entry of x once).

    Forward: per entry a comparison (max), a subtraction, a multiplication by beta and an exp;
    per output the sum, a log, a multiplication by 1/beta and the add of m. Its backward,
    softmax(beta (x - m)) * grad (docs/math.md (1c)), is elementwise and is not a MAC family.
    """
    n, m = n or prod(x.shape), prod(out.shape) if out.dim() else 1
    mults = n + m  # beta (x - m) per entry, 1/beta per output
    adds = n + (n - m) + m  # x - m, the sum, + m
    other = n + n + m  # max comparisons, exp, log
    return Count("smooth_max", mults, adds, mults + adds + other, other=other, op="smooth_max",
                 in_shape=shape_of(x), extra={"entries": n})


@handles(smooth_max)  # dispatches through __torch_function__
def _smooth_max(args, kwargs, out) -> Count:  # dnnlab.functional.smooth_max(x, beta, dim)
    return smooth_max_count(args[0], out)


@handles(SmoothMax, SmoothMaxPool2d)  # each module counted as one call
def _smooth_max_module(args, kwargs, out) -> Count:
    """SmoothMax / SmoothMaxPool2d (dnnlab.nn), counted as one call: (module, x) -> out; each
    output reduces its window's entries (every entry once for global pooling)."""
    module, x = args[0], args[1]
    m = prod(out.shape) if out.dim() else 1
    window = getattr(module, "kernel_size", None)
    return smooth_max_count(x, out, None if window is None else m * prod(window))


@handles("grid_sample", shortcut=_grid_sample_shape)
@handles("interpolate", shortcut=_interpolate_shape)
def _resample(args, kwargs, out) -> Count:
    """interpolate / grid_sample: one operation per output element (elementwise family; the
    interpolation weights are not itemized)."""
    n = out.numel()
    return Count("elementwise", 0, 0, n, other=n, in_shape=shape_of(args[0]))
