"""The analytic counter: runs a model on the meta device and counts every conv/linear/product.

How it works (no weights, no compute, no memory):
1. the model's parameters and buffers are swapped for meta tensors of the same shapes through
   `torch.func.functional_call` (the model itself is not touched);
2. a `TorchFunctionMode` sees every torch call (F.conv2d, F.linear, `@`, bmm, einsum,
   scaled_dot_product_attention, norms, pools, elementwise ops) with its real shapes and counts
   it with the handler registered for its name (`registry.py`; the built-in ones in
   `handlers.py` use the closed forms of docs/math.md (2), `formulas.py`); a composite function
   that hides linear maps (`F.multi_head_attention_forward`) is opened so that its inner calls
   are counted too, and dnnlab's own layers are counted like torch's (their autograd Functions
   call F.conv2d etc., which the mode sees; smooth max reaches it through
   `handle_torch_function`);
3. global module hooks, removed afterwards, keep a stack of the modules being run
   (`_ModuleStack`) so that every row carries the module path (`features.0`) and a failing
   layer can be named.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from dnnlab.errors import ShapeError
from dnnlab.opcount import registry
from dnnlab.opcount.handlers import count_smooth_max_module
from dnnlab.opcount.registry import shape_of
from dnnlab.opcount.rows import LayerRow, OpReport


class _ModuleStack:
    """The modules being run, through global forward hooks (removed by `close`)."""

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
        self.stack.append((module, [shape_of(a) for a in args if isinstance(a, torch.Tensor)]))
        if getattr(module, "dnnlab_family", None):
            self.opaque += 1

    def _post(self, module, args, out):
        if getattr(module, "dnnlab_family", None):
            self.opaque -= 1
            if self.opaque == 0 and self.mode is not None:
                count_smooth_max_module(self.mode, module, args[0], out)
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
    """Counts each torch call that has a registered handler; the `counter` handlers get."""

    def __init__(self, modules: _ModuleStack, rows: list, count_bias: bool):
        super().__init__()
        self.modules, self.rows, self.count_bias = modules, rows, count_bias
        modules.mode = self

    def add(self, op: str, family: str, in_shape: Sequence[int], out_shape: Sequence[int],
            mults: int, adds: int, macs: int, bwd: int = 0, bias_adds: int = 0,
            other: int = 0) -> None:
        """One counted operation, as a row under the module being run."""
        path, mtype = self.modules.where()
        self.rows.append(LayerRow(path, mtype, op, family, list(in_shape), list(out_shape),
                                  int(mults), int(adds), int(macs), int(bwd), int(bias_adds),
                                  int(other)))

    def fail(self, what: str) -> ShapeError:
        """A ShapeError naming the module being run (for handlers to raise)."""
        path, mtype = self.modules.where()
        return ShapeError(f"layer '{path or '<model>'}' ({mtype}): {what}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.modules.opaque:  # inside a module counted as a whole
            return func(*args, **kwargs)
        if func is F.multi_head_attention_forward:  # hides F.linear and SDPA: open it
            return _open_python(self, func, args, kwargs)
        name = getattr(func, "__name__", "")
        handler = registry.HANDLERS.get(name)
        if handler is None:
            return func(*args, **kwargs)
        pre = registry.PRECHECKS.get(name)
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


def meta_state(model: torch.nn.Module) -> dict:
    """Meta tensors shaped like the model's parameters and buffers (for functional_call)."""
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
    `training=True` (then auxiliary heads such as GoogLeNet's run too); its mode is
    restored. An input the network cannot take raises `ShapeError` naming the failing layer by
    its module path and the shapes. Calls are counted by the handlers of `registry.py`.
    """
    input_shape = [int(s) for s in input_shape]
    if any(s < 1 for s in input_shape):
        raise ShapeError(f"input_shape must be positive, got {input_shape}")
    names = {id(m): n for n, m in model.named_modules()}
    rows: list = []
    modules = _ModuleStack(names)
    mode = _CountMode(modules, rows, count_bias)
    x = torch.empty(input_shape, device="meta", dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        with mode:
            torch.func.functional_call(model, meta_state(model), (x,), strict=False,
                                       tie_weights=True)
    except ShapeError:
        raise
    except (RuntimeError, ValueError, IndexError, AssertionError, TypeError) as err:
        path, mtype = modules.where()
        shapes = modules.stack[-1][1] if modules.stack else [input_shape]
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ShapeError(f"layer '{path or '<model>'}' ({mtype}) cannot take input of shape "
                         f"{', '.join(map(str, shapes))} (model input {input_shape}): {first}"
                         ) from err
    finally:
        modules.close()
        for m, t in modes.items():
            m.training = t
    return OpReport(name or type(model).__name__, input_shape, rows, count_bias, training)
