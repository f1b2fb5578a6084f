"""The analytic counter: runs a model on the meta device and counts every conv/linear/product.

How it works (no weights, no compute, no memory):
1. the model's parameters and buffers are swapped, in place and only for the call, for meta
   tensors of the same shapes (one per distinct tensor: shared modules and tied weights stay
   shared); everything the forward could change (every module's attributes, hooks, caches,
   train/eval flags) is saved before and put back afterwards, whether the count succeeds or
   fails (`_ModelGuard`);
2. a `TorchFunctionMode` sees every torch call (F.conv2d, F.linear, `@`, bmm, einsum,
   scaled_dot_product_attention, RNN/LSTM/GRU layers and cells, norms, pools, elementwise ops)
   with its real shapes and hands it to the handler of its function object (`registry.py`;
   the built-in ones in `handlers.py` use the closed forms of docs/math.md (2), `formulas.py`);
   a call that has a closed form for its output too (a recurrent layer) is not run at all on
   meta (an `Entry.shortcut`: no per-time-step work); a composite function that hides linear
   maps (`F.multi_head_attention_forward`) is opened so that its inner calls are counted too;
   a call that computes but has no handler is listed in `OpReport.not_counted` with its module;
3. global module hooks, removed afterwards, keep a stack of the modules being run
   (`_ModuleStack`) so that every row carries the module path (`features.0`) and a failing
   layer can be named.

A model whose forward needs values (data-dependent shapes: detection's `nonzero`, NMS,
`.item()`) cannot run on meta; it is then run once on real CPU tensors (copies of its weights,
zeros for a model built on meta), counted the same way, and the report says so
(`OpReport.mode == "cpu"`, `mode_reason`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask
from torch.overrides import TorchFunctionMode

from dnnlab.core.errors import ShapeError, first_line
from dnnlab.opcount import registry
from dnnlab.opcount.dispatch import DispatchNet
from dnnlab.opcount.names import FREE
from dnnlab.opcount.params import buffer_counts, module_params, param_counts
from dnnlab.opcount.protocol import Count, CountError
from dnnlab.opcount.rows import LayerRow, OpReport
from dnnlab.opcount.traffic import fill_rows

_Tensor = torch.Tensor


class _ModuleStack:
    """The modules being run, through global forward hooks (removed by `close`)."""

    def __init__(self, names: dict):
        self.names = names  # id(module) -> path
        self.stack: list = []  # [(module, args)]
        self.mode = None  # the _CountMode, set by it
        self.opaque = 0  # > 0 inside a module counted as a whole (dnnlab's smooth max)
        self.table: dict = {}  # the count's handlers (module classes among the keys)
        self.handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._pre),
            torch.nn.modules.module.register_module_forward_hook(self._post),
        ]

    def _entry(self, module):
        """The handler of a module counted as one call (its class or a base class is a key)."""
        for cls in type(module).__mro__:
            if cls in self.table:
                return self.table[cls]
            if cls is torch.nn.Module:
                return None
        return None

    def _pre(self, module, args):
        self.stack.append((module, args))
        if self._entry(module) is not None:
            self.opaque += 1

    def _post(self, module, args, out):
        entry = self._entry(module)
        if entry is not None:
            self.opaque -= 1
            if self.opaque == 0 and self.mode is not None:
                self.mode.net.quiet += 1
                try:
                    self.mode.record(entry.handler, type(module).__name__, (module, *args),
                                     {}, out, [*tensors_of(args), *module.parameters()])
                finally:
                    self.mode.net.quiet -= 1
        if self.stack and self.stack[-1][0] is module:
            self.stack.pop()

    def where(self) -> tuple[str, str]:
        if not self.stack:
            return "", "<model>"
        m = self.stack[-1][0]
        return self.names.get(id(m), type(m).__name__), type(m).__name__

    def shapes(self) -> list:
        """The shapes of the tensors the running module was called with."""
        if not self.stack:
            return []
        return [list(a.shape) for a in self.stack[-1][1] if isinstance(a, _Tensor)]

    def close(self):
        for h in self.handles:
            h.remove()


class _CountMode(TorchFunctionMode):
    """Counts each torch call that has a registered handler; the `counter` handlers get."""

    def __init__(self, modules: _ModuleStack, rows: list, count_bias: bool, meta: bool,
                 table: dict, attention_backward: str = "math"):
        super().__init__()
        self.modules, self.rows, self.count_bias, self.meta = modules, rows, count_bias, meta
        self.table = modules.table = table
        self.recompute = attention_backward == "recompute"
        self.not_counted: dict = {}  # op -> [module paths] (first few)
        modules.mode = self
        self.net = DispatchNet(self)  # the aten ops below this layer (dispatch.py)

    def row(self, op: str, c: Count, in_shape: Sequence[int], out_shape: Sequence[int]
            ) -> LayerRow:
        """The row of one Count, under the module being run (bias adds out of `adds` when
        they are not counted)."""
        if not isinstance(c, Count):
            raise TypeError(f"the handler of '{op}' returned {c!r}, not a Count")
        path, mtype = self.modules.where()
        bias = int(c.bias_adds) if self.count_bias else 0
        bwd, causal_bwd = int(c.bwd_macs), c.causal_bwd_macs
        if self.recompute and bwd:  # flash/efficient/cudnn backward: + q k^T again
            bwd += int(c.extra.get("recompute_bwd_macs", 0))
            if causal_bwd is not None:
                causal_bwd += int(c.extra.get("recompute_causal_bwd_macs", 0))
        return LayerRow(path, mtype, c.op or op, c.family,
                        list(in_shape if c.in_shape is None else c.in_shape), list(out_shape),
                        int(c.mults), int(c.adds) - int(c.bias_adds) + bias, int(c.macs),
                        bwd, bias, int(c.other), dict(c.extra),
                        causal_macs=c.causal_macs, causal_bwd_macs=causal_bwd)

    def record(self, handler, op: str, args, kwargs, out, inputs: list) -> None:
        """Hand one call to its handler and add the rows of what it returns (bytes and
        dtype from the call's tensors, on its first row)."""
        try:
            counts = handler(args, kwargs, out)
        except CountError as err:
            raise self.fail(str(err)) from None
        if counts is None:
            return
        if isinstance(counts, Count):
            counts = [counts]
        elif not isinstance(counts, (list, tuple)):
            raise TypeError(f"the handler of '{op}' returned {counts!r}, not a Count")
        ins, outs = tensors_of((args, kwargs)), tensors_of(out)
        in_shape = list(ins[0].shape) if ins else []
        out_shape = list(outs[0].shape) if outs else []
        first = len(self.rows)
        self.rows.extend(self.row(op, c, in_shape, out_shape) for c in counts)
        fill_rows(self.rows[first:], inputs, outs)

    def fail(self, what: str) -> ShapeError:
        """A ShapeError naming the module being run (for handlers to raise)."""
        path, mtype = self.modules.where()
        return ShapeError(f"layer '{path or '<model>'}' ({mtype}): {what}")

    def note_uncounted(self, name: str) -> None:
        """List a computing call that no handler counted (with the first few module paths)."""
        paths = self.not_counted.setdefault(name, [])
        if len(paths) < 5:
            path = self.modules.where()[0] or "<model>"
            if path not in paths:
                paths.append(path)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.modules.opaque:  # inside a module counted as a whole
            return func(*args, **kwargs)
        entry = self.table.get(func)
        net = self.net
        if entry is None:
            name = getattr(func, "__name__", "")
            if func is F.multi_head_attention_forward:  # hides F.linear and SDPA: open it
                return _open_python(self, func, args, kwargs)
            base = name.split(".")[0]  # an OpOverload's name: 'mm.default'
            if base in FREE:  # moves or selects data: nothing for the net either
                with _Quiet(net):
                    return func(*args, **kwargs)
            net.depth += 1  # the net counts the product ops that run inside
            before = net.counted
            try:
                out = func(*args, **kwargs)
            finally:
                net.depth -= 1
            if net.counted == before and (isinstance(out, _Tensor) or (
                    isinstance(out, tuple) and out and isinstance(out[0], _Tensor))):
                self.note_uncounted(name)
            return out
        with _Quiet(net):  # counted here: the net is quiet inside this call
            name = getattr(func, "__name__", "")
            if entry.precheck is not None:
                try:
                    entry.precheck(args, kwargs)
                except CountError as err:
                    raise self.fail(str(err)) from None
            short = entry.shortcut if self.meta else None
            out = short(args, kwargs) if short is not None else func(*args, **kwargs)
            self.record(entry.handler, name, args, kwargs, out, tensors_of((args, kwargs)))
        return out


class _Quiet:
    """The dispatch net quiet inside a call: taken off the dispatch-mode stack when it is on
    top (no Python callback per aten op: the cheap path), else told to pass ops through."""

    __slots__ = ("net", "popped")

    def __init__(self, net: DispatchNet):
        self.net = net

    def __enter__(self):
        n = torch._C._len_torch_dispatch_stack()
        self.popped = n > 0 and torch._C._get_dispatch_stack_at(n - 1) is self.net
        if self.popped:
            torch._C._pop_torch_dispatch_stack(None)
        else:
            self.net.quiet += 1

    def __exit__(self, *exc):
        if self.popped:
            torch._C._push_on_torch_dispatch_stack(self.net)
        else:
            self.net.quiet -= 1
        return False


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


# -- leaving the model as it was ---------------------------------------------------------------

_CONTAINERS = (dict, list, set)


class _ModelGuard:
    """Saves every module's attributes (parameters, buffers, hooks, caches, flags: the whole
    `__dict__`, and the contents of the dicts/lists/sets in it) and puts them back on `restore`.

    A forward that caches something (timm's LeViT caches attention biases per device), a count
    that fails half-way, a swapped parameter: after `restore` the model holds exactly the
    objects it held before, with the same contents.
    """

    def __init__(self, model: torch.nn.Module):
        self.saved = []
        self.scripted = []  # (table, name, tensor): a ScriptModule keeps its tensors in C++
        self.modes = []  # (ScriptModule, training): its flag too
        for m in model.modules():
            d = m.__dict__
            inner = [(v, v.copy()) for v in d.values() if isinstance(v, _CONTAINERS)]
            self.saved.append((m, dict(d), inner))
            if isinstance(m, torch.jit.ScriptModule):
                self.scripted += [(table, k, t) for table in (m._parameters, m._buffers)
                                  for k, t in table.items() if t is not None]
                self.modes.append((m, m.training))

    def restore(self) -> None:
        for m, d, inner in self.saved:
            m.__dict__.clear()
            m.__dict__.update(d)
            for obj, copy in inner:
                obj.clear()
                if isinstance(obj, list):
                    obj.extend(copy)
                else:
                    obj.update(copy)
        for table, k, t in self.scripted:  # written through to the C++ module
            table[k] = t
        for m, flag in self.modes:
            m.training = flag


def _swap_state(model: torch.nn.Module, make: Callable[[_Tensor], _Tensor]) -> None:
    """Replace every parameter and buffer (in place, in the modules' dicts) by `make(t)`, one
    replacement per distinct tensor (tied weights and shared modules stay tied). `_ModelGuard`
    puts the originals back."""
    memo: dict = {}
    for m in model.modules():
        for table in (m._parameters, m._buffers):
            for k, t in table.items():
                if t is None:
                    continue
                new = memo.get(id(t))
                if new is None:
                    new = make(t)
                    if isinstance(t, torch.nn.Parameter):
                        new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
                    memo[id(t)] = new
                table[k] = new
        if hasattr(m, "_init_flat_weights"):  # nn.RNN/LSTM/GRU keep a list of their weights
            m._init_flat_weights()


def _meta_like(t: _Tensor) -> _Tensor:
    return torch.empty_like(t, device="meta")


def _meta_input(t: _Tensor) -> _Tensor:
    """A meta stand-in for an input that keeps its `requires_grad`: an input that needs its
    gradient (saliency maps, adversarial examples) gets its input gradient counted."""
    out = _meta_like(t)
    if t.requires_grad and out.is_floating_point():  # not a leaf: in-place ops work, as on
        return out.requires_grad_(True).clone()     # an input computed from a leaf
    return out


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if none): the
    `input_shape` input is made in it, so a bf16 model is counted in bf16."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _has_meta(model: torch.nn.Module) -> bool:
    return any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers())


def _cpu_or_same(t: _Tensor) -> _Tensor:
    return _cpu_like(t) if t.is_meta else t


def _cpu_like(t: _Tensor) -> _Tensor:
    """A CPU copy (the forward may change buffers in place); zeros for a meta tensor (ones for
    integers, as `dnnlab.opcount.build.materialize`)."""
    if t.is_meta:
        out = torch.empty_like(t, device="cpu")
        return out.zero_() if t.is_floating_point() or t.is_complex() else out.fill_(1)
    return t.detach().clone()


# -- inputs ------------------------------------------------------------------------------------

def _map(tree: Any, fn: Callable[[_Tensor], Any]) -> Any:
    """`fn` applied to every tensor of a nested structure of tuples, lists and dicts (and to a
    flex_attention BlockMask: `_block_mask`)."""
    if isinstance(tree, _Tensor):
        return fn(tree)
    if isinstance(tree, BlockMask):
        return _block_mask(tree, fn)
    if isinstance(tree, tuple):
        return tuple(_map(v, fn) for v in tree)
    if isinstance(tree, list):
        return [_map(v, fn) for v in tree]
    if isinstance(tree, Mapping):
        return {k: _map(v, fn) for k, v in tree.items()}
    return tree


def _block_mask(mask: Any, fn: Callable[[_Tensor], Any]) -> Any:
    """A BlockMask on the device `fn` makes tensors on; a meta one keeps its real block tables
    (`dnnlab_values` on its meta tables) so that the blocks it computes are still counted."""
    probe = fn(mask.kv_num_blocks)
    if not probe.is_meta:
        return mask.to(probe.device)
    out = mask.to("meta")
    out.kv_num_blocks.dnnlab_values = (mask.kv_num_blocks, mask.kv_indices)
    if mask.full_kv_num_blocks is not None and not mask.full_kv_num_blocks.is_meta:
        out.full_kv_num_blocks.dnnlab_values = (mask.full_kv_num_blocks, mask.full_kv_indices)
    return out


class _EagerFlex:
    """flex_attention run eagerly inside a count (its higher-order op's dense implementation,
    not torch.compile, which cannot compile under the counter's TorchFunctionMode), and on meta
    tensors too (only shapes matter there): module globals it reads at call time, put back."""

    def __init__(self, meta: bool):
        import torch.nn.attention.flex_attention as flex

        self.flex, self.meta = flex, meta

    def __enter__(self):
        f = self.flex
        self.saved = (f._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG, f._validate_device)
        f._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
        if self.meta:
            f._validate_device = _no_check
        return self

    def __exit__(self, *exc):
        self.flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG, self.flex._validate_device = self.saved
        return False


def _no_check(*args, **kwargs) -> None:
    return None


def tensors_of(tree: Any) -> list:
    """The tensors of a nested structure (tuples, lists, dicts, model outputs), in order."""
    if isinstance(tree, _Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for v in tree for t in tensors_of(v)]
    if isinstance(tree, Mapping):
        return [t for v in tree.values() for t in tensors_of(v)]
    return []


def call_args(input_shape: Sequence[int] | None, inputs: Any,
              dtype: torch.dtype = torch.float32) -> tuple[tuple, dict]:
    """(args, kwargs) the model is called with.

    `inputs`: a tensor (the one argument), a tuple (the positional arguments), a dict (keyword
    arguments), or anything else (a list of images: the one argument). `input_shape`: the
    shorthand for one float tensor of that shape.
    """
    if (input_shape is None) == (inputs is None):
        raise ShapeError("give either input_shape or inputs (what the model is called with)")
    if inputs is None:
        shape = [int(s) for s in input_shape]
        if not shape or any(s < 1 for s in shape):
            raise ShapeError(f"input_shape must be positive, got {list(input_shape)}")
        return (torch.empty(shape, device="meta", dtype=dtype),), {}
    if isinstance(inputs, tuple):
        return inputs, {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return (inputs,), {}


def describe(args: tuple, kwargs: dict) -> str:
    """'float32[1, 3, 224, 224]' or 'input_ids=int64[1, 128], ...' (dtypes and shapes)."""
    def one(v: Any) -> str:
        if isinstance(v, _Tensor):
            return f"{str(v.dtype).replace('torch.', '')}{list(v.shape)}"
        if isinstance(v, (list, tuple)):
            inner = ", ".join(one(x) for x in v[:4]) + (", ..." if len(v) > 4 else "")
            return f"[{inner}]"
        if isinstance(v, Mapping):
            return "{" + ", ".join(f"{k}: {one(x)}" for k, x in v.items()) + "}"
        return repr(v)
    return ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()])


class ForwardError(ShapeError):
    """The model's forward raised something other than a shape error: the message names the
    layer path, the exception and the model input, and says nothing of shapes. A ShapeError
    still, so that every caller that catches a count's failure catches this one too."""


_SHAPE_WORDS = ("shape", "size", "dimension", "dim ", "-d ", "d input", "channels",
                "cannot be multiplied", "must match", "expected input", "out of range")


def _is_shape_error(err: BaseException) -> bool:
    """Whether an error of the forward is about the input's shape: torch's op errors
    (RuntimeError, IndexError) and any error whose text speaks of shapes or sizes."""
    if isinstance(err, (RuntimeError, IndexError)):
        return True
    text = str(err).lower()
    return any(w in text for w in _SHAPE_WORDS)


_DATA_DEPENDENT = ("meta", "data-dependent", "no data", "item()", "nonzero")


def _needs_values(err: BaseException) -> bool:
    """Whether an error on meta comes from an op that needs real values (not a bad shape)."""
    if isinstance(err, NotImplementedError):
        return True
    text = str(err).lower()
    return any(w in text for w in _DATA_DEPENDENT)


# -- the count ---------------------------------------------------------------------------------

def _run(model, args, kwargs, names, count_bias, training, meta, dtype=None, table=None,
         attention_backward="math"):
    """One counted forward (meta or CPU); the model is restored by the caller's guard.
    `dtype`: the floating-point weights are counted in it (None: as they are); `table`: the
    count's handlers (default: the registered ones)."""
    rows: list = []
    modules = _ModuleStack(names)
    mode = _CountMode(modules, rows, count_bias, meta,
                      registry.table() if table is None else table, attention_backward)
    model.train(training)
    make = _meta_like if meta else _cpu_like
    if dtype is not None:
        _swap_state(model, lambda t: make(t).to(dtype) if t.is_floating_point() else make(t))
    else:
        _swap_state(model, make)
    conv = _meta_input if meta else _cpu_real
    args, kwargs = _map(args, conv), _map(kwargs, conv)
    try:
        with _EagerFlex(meta), mode.net, mode:  # the dispatch net under the function layer
            model(*args, **kwargs)
    except ShapeError:
        raise
    except Exception as err:  # noqa: BLE001 - named by the layer that failed, below
        err.dnnlab_where = modules.where()  # type: ignore[attr-defined]
        err.dnnlab_shapes = modules.shapes()  # type: ignore[attr-defined]
        raise
    finally:
        modules.close()
    return rows, mode.not_counted


def _cpu_real(t: _Tensor) -> _Tensor:
    """A real CPU input: the tensor itself, or `_cpu_like`'s stand-in for a meta one."""
    if not t.is_meta:
        return t
    out = _cpu_like(t)
    return out.requires_grad_(True).clone() if t.requires_grad else out


def count_ops(model: torch.nn.Module, input_shape: Sequence[int] | None = None, *,
              inputs: Any = None, count_bias: bool = True, name: str | None = None,
              dtype: torch.dtype | None = None, training: bool = False,
              device: str = "auto", handlers: Mapping | None = None,
              attention_backward: str = "math") -> OpReport:
    """Count the multiplications, additions and MACs of every op of `model` on its input.

    The input: `input_shape` (one float tensor of that shape), or `inputs`, what the model is
    called with: a tensor, a tuple of positional arguments, a dict of keyword arguments (token
    ids, masks: any dtype), or another object passed as the one argument (a list of images);
    nested structures are fine. Meta tensors are fine too: only shapes and dtypes matter.

    Runs on the meta device (`device="auto"` or `"meta"`): the cost does not depend on batch
    size or resolution. A model that needs values (data-dependent shapes) is run once on CPU
    tensors instead (`"auto"`; `"cpu"` forces it) and the report says which and why
    (`mode`, `mode_reason`). The model is run in eval mode, as fvcore counts it, unless
    `training=True`. In every case, success or failure, the model's parameters, buffers, hooks,
    caches and modes are left exactly as they were. An input the network cannot take raises
    `ShapeError` naming the failing layer by its module path and the shapes. Calls are counted
    by the handlers of `registry.py` (a copy of its table; `handlers=` {torch function, name
    or module class: handler, Entry or None} adds, overrides or removes some for this call
    only); calls that compute but have none are listed in `OpReport.not_counted`. Below
    those calls a dispatch-level net (`dispatch.py`) counts the aten product ops no handler
    counted (TorchScript, custom ops, direct aten calls). `attention_backward`: "math" (the
    default: attention's backward is its 4 products, twice the forward) or "recompute" (the
    flash/efficient/cudnn kernels' convention, FlopCounterMode's: + q k^T once more).
    """
    if device not in ("auto", "meta", "cpu"):
        raise ValueError(f"device must be 'auto', 'meta' or 'cpu', got {device!r}")
    if attention_backward not in ("math", "recompute"):
        raise ValueError("attention_backward must be 'math' or 'recompute', got "
                         f"{attention_backward!r}")
    table = registry.with_overrides(registry.table(), handlers)
    args, kwargs = call_args(input_shape, inputs, dtype or _float_dtype(model))
    shape = ([int(s) for s in input_shape] if inputs is None else
             list(tensors_of((args, kwargs))[0].shape) if tensors_of((args, kwargs)) else [])
    names = {id(m): n for n, m in model.named_modules()}  # the first path, as fvcore
    guard = _ModelGuard(model)
    mode, reason = ("cpu", "asked for (device='cpu')") if device == "cpu" else ("meta", "")
    try:
        try:
            rows, not_counted = _run(model, args, kwargs, names, count_bias, training,
                                     meta=mode == "meta", dtype=dtype, table=table,
                                     attention_backward=attention_backward)
        except ShapeError:
            raise
        except Exception as err:  # noqa: BLE001
            if mode != "meta" or device == "meta" or not _needs_values(err):
                raise
            guard.restore()
            mode, reason = "cpu", f"cannot run on meta: {first_line(err)}"
            rows, not_counted = _run(model, args, kwargs, names, count_bias, training,
                                     meta=False, dtype=dtype, table=table,
                                     attention_backward=attention_backward)
    except ShapeError:
        raise
    except Exception as err:  # noqa: BLE001 - one line naming the layer
        path, mtype = getattr(err, "dnnlab_where", ("", "<model>"))
        shapes = getattr(err, "dnnlab_shapes", []) or [shape]
        if not _is_shape_error(err):  # what the forward raised, not a guess about shapes
            raise ForwardError(
                f"layer '{path or '<model>'}' ({mtype}) raised {type(err).__name__}: "
                f"{first_line(err)} (model input "
                f"{shape if inputs is None else describe(args, kwargs)})") from err
        raise ShapeError(f"layer '{path or '<model>'}' ({mtype}) cannot take input of shape "
                         f"{', '.join(map(str, shapes))} (model input "
                         f"{shape if inputs is None else describe(args, kwargs)}): "
                         f"{first_line(err)}") from err
    finally:
        guard.restore()
    return OpReport(name or type(model).__name__, shape, rows, count_bias, training,
                    inputs=describe(args, kwargs), mode=mode, mode_reason=reason,
                    not_counted=not_counted, params=param_counts(model),
                    buffers=buffer_counts(model), module_params=module_params(model),
                    module_types={n: type(m).__name__ for n, m in model.named_modules()})


def meta_state(model: torch.nn.Module) -> dict:
    """Meta tensors shaped like the model's parameters and buffers (for functional_call)."""
    state = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        state[name] = torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
    for name, b in model.named_buffers(remove_duplicate=False):
        state[name] = torch.empty_like(b, device="meta")
    return state


class swapped:  # noqa: N801 - a context manager, used like a function
    """`with swapped(model, meta=True):` the model's weights are meta tensors (or CPU copies)
    inside the block, and everything is put back afterwards (for the fvcore and FlopCounterMode
    checks). `copy=False` keeps real CPU weights as they are (only meta ones become zeros)."""

    def __init__(self, model: torch.nn.Module, meta: bool = True, training: bool = False,
                 copy: bool = True):
        self.model, self.meta, self.training, self.copy = model, meta, training, copy

    def __enter__(self):
        self.guard = _ModelGuard(self.model)
        self.model.train(self.training)
        if self.meta:
            _swap_state(self.model, _meta_like)
        elif self.copy or _has_meta(self.model):
            _swap_state(self.model, _cpu_like if self.copy else _cpu_or_same)
        return self.model

    def __exit__(self, *exc):
        self.guard.restore()
        return False


def as_inputs(args: tuple, kwargs: dict, meta: bool) -> tuple[tuple, dict]:
    """The call's tensors as meta tensors (meta=True) or real CPU tensors (zeros for meta)."""
    conv = _meta_input if meta else _cpu_real
    return _map(args, conv), _map(kwargs, conv)
