"""The analytic counter: runs a model on the meta device and counts every conv/linear/product.

How it works (no weights, no compute, no memory):
1. the model's parameters and buffers are swapped for meta tensors of the same shapes through
   `torch.func.functional_call` (the model itself is not touched);
2. a `TorchFunctionMode` sees every torch call (F.conv2d, F.linear, `@`, bmm, einsum,
   scaled_dot_product_attention, norms, pools, elementwise ops) with its real shapes and counts
   it by the seed's closed forms (`formulas.py`); a composite function that hides linear maps
   (`F.multi_head_attention_forward`) is opened so that its inner calls are counted too, and
   dnnlab's own layers are counted like torch's (their autograd Functions call F.conv2d etc.,
   which the mode sees; smooth max reaches it through `handle_torch_function`);
3. global module hooks, removed afterwards, keep a stack of the modules being run so that every
   row carries the module path (`features.0`) and a failing layer can be named.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from dnnlab.errors import ShapeError
from dnnlab.opcount import formulas as fm
from dnnlab.opcount.report import LayerRow, OpReport


def _arg(args: Sequence, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _tup(v: Any, n: int) -> tuple:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


def _shape(t: Any) -> list:
    return list(t.shape) if isinstance(t, torch.Tensor) else []


def _rg(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


class _Tracker:
    """Module stack through global forward hooks (removed by `close`)."""

    def __init__(self, names: dict):
        self.names = names  # id(module) -> path
        self.stack: list = []  # [(module, input shapes)]
        self.mode = None  # the _CountMode, set by it
        self.opaque = 0  # > 0 inside a module counted as a whole (dnnlab's smooth max)
        self.handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._pre),
            torch.nn.modules.module.register_module_forward_hook(self._post),
        ]

    def _pre(self, module, args):
        self.stack.append((module, [_shape(a) for a in args if isinstance(a, torch.Tensor)]))
        if getattr(module, "dnnlab_family", None):
            self.opaque += 1

    def _post(self, module, args, out):
        if getattr(module, "dnnlab_family", None):
            self.opaque -= 1
            if self.opaque == 0 and self.mode is not None:
                _count_smooth_max_module(self.mode, module, args[0], out)
        if self.stack and self.stack[-1][0] is module:
            self.stack.pop()

    def where(self) -> tuple[str, str]:
        if not self.stack:
            return "", "<model>"
        m = self.stack[-1][0]
        return self.names.get(id(m), type(m).__name__), type(m).__name__

    def close(self):
        for h in self.handles:
            h.remove()


class _CountMode(TorchFunctionMode):
    def __init__(self, tracker: _Tracker, rows: list, count_bias: bool):
        super().__init__()
        self.tracker, self.rows, self.count_bias = tracker, rows, count_bias
        tracker.mode = self

    def _add(self, op, family, in_shape, out_shape, mults, adds, macs, bwd=0, bias_adds=0,
             other=0):
        path, mtype = self.tracker.where()
        self.rows.append(LayerRow(path, mtype, op, family, list(in_shape), list(out_shape),
                                  int(mults), int(adds), int(macs), int(bwd), int(bias_adds),
                                  int(other)))

    def fail(self, what: str) -> ShapeError:
        path, mtype = self.tracker.where()
        return ShapeError(f"layer '{path or '<model>'}' ({mtype}): {what}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.tracker.opaque:  # inside a module counted as a whole
            return func(*args, **kwargs)
        if func is F.multi_head_attention_forward:  # hides F.linear and SDPA: open it
            return _open_python(self, func, args, kwargs)
        name = getattr(func, "__name__", "")
        handler = _HANDLERS.get(name)
        if handler is None:
            return func(*args, **kwargs)
        pre = _PRECHECKS.get(name)
        if pre is not None:
            pre(self, args, kwargs)
        out = func(*args, **kwargs)
        handler(self, name, args, kwargs, out)
        return out


def _open_python(mode: _CountMode, func: Callable, args, kwargs):
    """Run a torch-function-dispatching Python composite with the counter on inside it."""
    g = func.__globals__
    keys = [k for k in ("has_torch_function", "has_torch_function_unary",
                        "has_torch_function_variadic") if k in g]
    saved = {k: g[k] for k in keys}
    for k in keys:
        g[k] = _never
    try:
        with mode:
            return func(*args, **kwargs)
    finally:
        g.update(saved)


def _never(*args, **kwargs) -> bool:
    return False


# ----------------------------------------------------------------------------------------------
# handlers: (mode, name, args, kwargs, out) -> adds rows
# ----------------------------------------------------------------------------------------------

def _conv_precheck(mode: _CountMode, args, kwargs) -> None:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    d = w.dim() - 2
    groups = _arg(args, kwargs, 6, "groups", 1)
    batched = x.dim() == d + 2
    if x.dim() not in (d + 1, d + 2):
        raise mode.fail(f"expected a {d + 2}-d input (N, C, *spatial), got shape {_shape(x)}")
    c_in = x.shape[1] if batched else x.shape[0]
    if c_in != w.shape[1] * groups:
        raise mode.fail(f"input has {c_in} channels, the layer expects {w.shape[1] * groups} "
                        f"(input shape {_shape(x)}, weight shape {_shape(w)})")
    pad = _arg(args, kwargs, 4, "padding", 0)
    if isinstance(pad, str):
        return
    stride, pad = _tup(_arg(args, kwargs, 3, "stride", 1), d), _tup(pad, d)
    dil = _tup(_arg(args, kwargs, 5, "dilation", 1), d)
    spatial = x.shape[-d:]
    for i in range(d):
        n = fm.conv_out_size(spatial[i], w.shape[2 + i], stride[i], pad[i], dil[i])
        if n < 1:
            raise mode.fail(
                f"input of shape {_shape(x)} is too small: kernel {w.shape[2 + i]} "
                f"(dilation {dil[i]}) on padded length {spatial[i] + 2 * pad[i]} gives an "
                f"output of length {n}")


def _conv(mode: _CountMode, name, args, kwargs, out) -> None:
    x, w, b = (_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"),
               _arg(args, kwargs, 2, "bias"))
    d = w.dim() - 2
    groups = _arg(args, kwargs, 6, "groups", 1)
    pad = _arg(args, kwargs, 4, "padding", 0)
    stride, dil = _tup(_arg(args, kwargs, 3, "stride", 1), d), _tup(_arg(args, kwargs, 5,
                                                                           "dilation", 1), d)
    if isinstance(pad, str):  # 'same' keeps the size (stride 1), 'valid' pads nothing
        expect = list(x.shape[-d:]) if pad == "same" else [
            fm.conv_out_size(x.shape[-d + i], w.shape[2 + i], stride[i], 0, dil[i])
            for i in range(d)]
    else:
        pad = _tup(pad, d)
        expect = [fm.conv_out_size(x.shape[-d + i], w.shape[2 + i], stride[i], pad[i], dil[i])
                  for i in range(d)]
    if list(out.shape[-d:]) != expect:  # the standard formula must agree with torch
        raise mode.fail(f"output shape {_shape(out)} disagrees with the formula {expect}")
    out_shape = list(out.shape) if out.dim() == d + 2 else [1] + list(out.shape)
    c_in = x.shape[-d - 1]
    bias = b is not None and mode.count_bias
    mults, adds, macs = fm.conv_counts(out_shape, c_in, w.shape[2:], groups, bias)
    bwd = macs * (int(_rg(x)) + int(_rg(w)))  # seed 4b: input grad by transposed conv, weight
    mode._add(name, "conv", _shape(x), _shape(out), mults, adds, macs, bwd,  # grad by correlation
              prod(out_shape) if bias else 0)
    mode.rows[-1].extra.update(w_shape=_shape(w), groups=groups, transposed=False,
                               x_rg=_rg(x), w_rg=_rg(w))
    if isinstance(_arg(args, kwargs, 4, "padding", 0), str):
        mode.rows[-1].extra["string_padding"] = True


def _conv_transpose(mode: _CountMode, name, args, kwargs, out) -> None:
    x, w, b = (_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"),
               _arg(args, kwargs, 2, "bias"))
    d = w.dim() - 2
    stride, pad = _tup(_arg(args, kwargs, 3, "stride", 1), d), _tup(_arg(args, kwargs, 4,
                                                                         "padding", 0), d)
    opad = _tup(_arg(args, kwargs, 5, "output_padding", 0), d)
    groups = _arg(args, kwargs, 6, "groups", 1)
    dil = _tup(_arg(args, kwargs, 7, "dilation", 1), d)
    expect = [fm.conv_transpose_out_size(x.shape[-d + i], w.shape[2 + i], stride[i], pad[i],
                                         dil[i], opad[i]) for i in range(d)]
    if list(out.shape[-d:]) != expect:
        raise mode.fail(f"output shape {_shape(out)} disagrees with the formula {expect}")
    in_shape = list(x.shape) if x.dim() == d + 2 else [1] + list(x.shape)
    out_shape = list(out.shape) if out.dim() == d + 2 else [1] + list(out.shape)
    c_out = w.shape[1] * groups
    bias = b is not None and mode.count_bias
    mults, adds, macs = fm.conv_transpose_counts(in_shape, c_out, w.shape[2:], groups,
                                                 out_shape, bias)
    bwd = macs * (int(_rg(x)) + int(_rg(w)))
    mode._add(name, "conv", _shape(x), _shape(out), mults, adds, macs, bwd,
              prod(out_shape) if bias else 0)
    mode.rows[-1].extra.update(w_shape=_shape(w), groups=groups, transposed=True,
                               x_rg=_rg(x), w_rg=_rg(w))


def _linear_precheck(mode: _CountMode, args, kwargs) -> None:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    if x.shape[-1] != w.shape[-1]:
        raise mode.fail(f"input has {x.shape[-1]} features, the layer expects {w.shape[-1]} "
                        f"(input shape {_shape(x)}, weight shape {_shape(w)})")


def _linear(mode: _CountMode, name, args, kwargs, out) -> None:
    x, w, b = (_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"),
               _arg(args, kwargs, 2, "bias"))
    in_shape = list(x.shape) if x.dim() > 1 else [1] + list(x.shape)
    bias = b is not None and mode.count_bias
    mults, adds, macs = fm.linear_counts(in_shape, w.shape[0], bias)
    bwd = macs * (int(_rg(x)) + int(_rg(w)))
    mode._add(name, "linear", _shape(x), _shape(out), mults, adds, macs, bwd,
              prod(out.shape) if bias else 0)


def _addmm(mode: _CountMode, name, args, kwargs, out) -> None:
    m1, m2 = args[1], args[2]  # addmm(bias, m1, m2)
    mults, adds, macs = fm.matmul_counts(m1.shape, m2.shape, out.shape)
    bias_adds = prod(out.shape) if mode.count_bias else 0
    bwd = macs * (int(_rg(m1)) + int(_rg(m2)))
    mode._add(name, "linear", _shape(m1), _shape(out), mults, adds + bias_adds, macs, bwd,
              bias_adds)


def _matmul(mode: _CountMode, name, args, kwargs, out) -> None:
    a, b = args[0], args[1]
    if name == "__rmatmul__":
        a, b = b, a
    mults, adds, macs = fm.matmul_counts(a.shape, b.shape, out.shape)
    bwd = macs * (int(_rg(a)) + int(_rg(b)))
    mode._add(name, "matmul", _shape(a), _shape(out), mults, adds, macs, bwd)


def _einsum(mode: _CountMode, name, args, kwargs, out) -> None:
    eq = args[0]
    ops = args[1:] if not (len(args) == 2 and isinstance(args[1], (list, tuple))) else args[1]
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict = {}
    for term, t in zip(lhs, ops):
        for ch, n in zip(term, t.shape):
            sizes[ch] = n
    macs = prod(sizes.values())  # every index combination is one multiply-accumulate
    outputs = prod(out.shape) if out.dim() else 1
    bwd = macs * sum(int(_rg(t)) for t in ops)
    mode._add("einsum", "matmul", _shape(ops[0]), _shape(out), macs * (len(ops) - 1),
              macs - outputs, macs, bwd)


def _sdpa(mode: _CountMode, name, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    mults, adds, macs = fm.attention_counts(q.shape, k.shape, v.shape)
    *batch, L, E = q.shape
    S, Ev = v.shape[-2], v.shape[-1]
    B = prod(batch)
    # backward: grad_attn = g v^T, grad_v = attn^T g, grad_q = ds k, grad_k = ds^T q (4 products;
    # the math path. Flash/efficient kernels also recompute q k^T: + L S E)
    bwd = B * L * S * (2 * E + 2 * Ev) if (_rg(q) or _rg(k) or _rg(v)) else 0
    mode._add(name, "attention", _shape(q), _shape(out), mults, adds, macs, bwd)


def _norm(mode: _CountMode, name, args, kwargs, out) -> None:
    x = args[0]
    weight = kwargs.get("weight", args[2] if name == "layer_norm" and len(args) > 2 else None)
    if name == "batch_norm":
        weight = _arg(args, kwargs, 3, "weight")
    elif name == "group_norm":
        weight = _arg(args, kwargs, 2, "weight")
    elif name == "instance_norm":
        weight = _arg(args, kwargs, 3, "weight")
    n = prod(x.shape)
    k = 2 if weight is not None else 1  # (x - mean) * inv_std [* gamma + beta]
    mode._add(name, "norm", _shape(x), _shape(out), n * k, n * k, 2 * n * k)


def _pool(mode: _CountMode, name, args, kwargs, out) -> None:
    x = args[0]
    y = out[0] if isinstance(out, tuple) else out
    n_in, n_out = prod(x.shape), prod(y.shape)
    if "adaptive" in name:
        window = max(n_in // max(n_out, 1), 1)
    else:
        d = 1 if "1d" in name else 2 if "2d" in name else 3
        window = prod(_tup(_arg(args, kwargs, 1, "kernel_size"), d))
    if "max" in name:  # comparisons only
        mode._add(name, "pool", _shape(x), _shape(y), 0, 0, n_out * (window - 1),
                  other=n_out * (window - 1))
    else:  # sum the window, divide once
        mode._add(name, "pool", _shape(x), _shape(y), n_out, n_out * (window - 1),
                  n_out * window)


_ADDS = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__rsub__",
         "__isub__"}
_MULS = {"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__",
         "__itruediv__", "__rtruediv__"}


def _elementwise(mode: _CountMode, name, args, kwargs, out) -> None:
    if not isinstance(out, torch.Tensor):
        return
    n = prod(out.shape) if out.dim() else 1
    if name in _ADDS:
        mode._add(name, "elementwise", _shape(args[0]), _shape(out), 0, n, n)
    elif name in _MULS:
        mode._add(name, "elementwise", _shape(args[0]), _shape(out), n, 0, n)
    else:  # activations, softmax: one nonlinear op per element
        mode._add(name, "elementwise", _shape(args[0]), _shape(out), 0, 0, n, other=n)


def _count_smooth_max_module(mode: _CountMode, module, x, out) -> None:
    """SmoothMax / SmoothMaxPool2d as one row: each output reduces `window` entries."""
    m = prod(out.shape) if out.dim() else 1
    if getattr(module, "kernel_size", "no") is None or not hasattr(module, "kernel_size"):
        n = prod(x.shape)  # global pooling or a reduction: every entry once
    else:
        n = m * prod(module.kernel_size)
    _count_smooth_max(mode, (x,), out, n)


def _count_smooth_max(mode: _CountMode, args, out, n: int | None = None) -> None:
    """nu_beta(x) = m + (1/beta) log sum exp(beta (x - m)) (seed 1a, shifted by m = max x).

    Forward: per entry a comparison (max), a subtraction, a multiplication by beta and an exp;
    per output the sum, a log, a multiplication by 1/beta and the add of m. Its backward,
    softmax(beta (x - m)) * grad (seed 1c), is elementwise and is not a MAC family.
    """
    x = args[0]
    n, m = n or prod(x.shape), prod(out.shape) if out.dim() else 1
    mults = n + m  # beta (x - m) per entry, 1/beta per output
    adds = n + (n - m) + m  # x - m, the sum, + m
    other = n + n + m  # max comparisons, exp, log
    bwd = 0
    mode._add("smooth_max", "smooth_max", _shape(x), _shape(out), mults, adds,
              mults + adds + other, bwd, other=other)
    mode.rows[-1].extra["entries"] = n


_HANDLERS: dict = {}
_PRECHECKS: dict = {}
for _n in ("conv1d", "conv2d", "conv3d"):
    _HANDLERS[_n], _PRECHECKS[_n] = _conv, _conv_precheck
for _n in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
    _HANDLERS[_n] = _conv_transpose
_HANDLERS["linear"], _PRECHECKS["linear"] = _linear, _linear_precheck
_HANDLERS["addmm"] = _addmm
for _n in ("matmul", "__matmul__", "__rmatmul__", "mm", "bmm"):
    _HANDLERS[_n] = _matmul
_HANDLERS["einsum"] = _einsum
_HANDLERS["smooth_max"] = lambda mode, name, args, kwargs, out: _count_smooth_max(mode, args, out)
_HANDLERS["scaled_dot_product_attention"] = _sdpa
for _n in ("batch_norm", "layer_norm", "group_norm", "instance_norm"):
    _HANDLERS[_n] = _norm
for _d in ("1d", "2d", "3d"):
    for _p in ("max_pool", "_max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool"):
        _HANDLERS[_p + _d] = _pool
    _HANDLERS["max_pool" + _d + "_with_indices"] = _pool
for _n in (_ADDS | _MULS | {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish",
                           "hardsigmoid", "relu6", "hardtanh", "hardtanh_", "softmax",
                           "log_softmax", "elu", "leaky_relu", "mish", "sigmoid_", "silu_",
                           "hardswish_"}):
    _HANDLERS[_n] = _elementwise


# ----------------------------------------------------------------------------------------------

def _meta_state(model: torch.nn.Module) -> dict:
    state = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        state[name] = torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
    for name, b in model.named_buffers(remove_duplicate=False):
        state[name] = torch.empty_like(b, device="meta")
    return state


def count_ops(model: torch.nn.Module, input_shape: Sequence[int], *, count_bias: bool = True,
              name: str | None = None, dtype: torch.dtype = torch.float32,
              training: bool = False) -> OpReport:
    """Count the multiplications, additions and MACs of every op of `model` on `input_shape`.

    Runs on the meta device: the cost does not depend on batch size or resolution, and the
    model is left as it was (its parameters are swapped for meta tensors only during the call,
    and the hooks are removed). The model is run in eval mode, as fvcore counts it, unless
    `training=True` (then auxiliary heads such as GoogLeNet's run too); its mode is restored. An input the network cannot take raises `ShapeError` naming the
    failing layer by its module path and the shapes.
    """
    input_shape = [int(s) for s in input_shape]
    if any(s < 1 for s in input_shape):
        raise ShapeError(f"input_shape must be positive, got {input_shape}")
    names = {id(m): n for n, m in model.named_modules()}
    rows: list = []
    tracker = _Tracker(names)
    mode = _CountMode(tracker, rows, count_bias)
    x = torch.empty(input_shape, device="meta", dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        with mode:
            torch.func.functional_call(model, _meta_state(model), (x,), strict=False,
                                       tie_weights=True)
    except ShapeError:
        raise
    except (RuntimeError, ValueError, IndexError, AssertionError, TypeError) as err:
        path, mtype = tracker.where()
        shapes = tracker.stack[-1][1] if tracker.stack else [input_shape]
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ShapeError(f"layer '{path or '<model>'}' ({mtype}) cannot take input of shape "
                         f"{', '.join(map(str, shapes))} (model input {input_shape}): {first}"
                         ) from err
    finally:
        tracker.close()
        for m, t in modes.items():
            m.training = t
    return OpReport(name or type(model).__name__, input_shape, rows, count_bias, training)


def build_meta(builder: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a model without allocating weights when possible.

    Most builders work under `torch.device("meta")`; some (torchvision's regnets) do not, and
    are built on the CPU instead. Either way `count_ops` only looks at shapes.
    """
    try:
        with torch.device("meta"):
            return builder()
    except Exception:  # noqa: BLE001 - e.g. regnets call .item() while building
        return builder()





def torchvision_input_shape(name: str, model: torch.nn.Module | None = None) -> list:
    """Default input shape (1, 3, H, W) of a torchvision classifier.

    The crop size of its default weights' transforms (299 for inception_v3, 600 for
    efficientnet_b7, ...), read from the weights' metadata (nothing is downloaded); a ViT built
    without weights takes its own `image_size` (224 for vit_h_14, whose SWAG weights use 518).
    """
    import torchvision

    if model is not None and hasattr(model, "image_size"):
        size = int(model.image_size)
    else:
        try:
            w = torchvision.models.get_model_weights(name).DEFAULT
            size = int(w.transforms().crop_size[0])
        except (ValueError, AttributeError, IndexError, TypeError):
            size = 224
    return [1, 3, size, size]
