"""Which torch calls the counter counts, and how: one pure handler per torch function.

The counter (`count_ops`) sees every torch call of a model through a `TorchFunctionMode`. A
call whose function has a handler in the counter's table is run, then handed to the handler
with its real shapes; the handler returns a `Count` and the counter makes the row (module path,
shapes, bytes, dtype). To count another op:

    import torch
    from dnnlab.opcount import Count, register_handler
    from dnnlab.opcount.registry import arg

    def count_cumsum(args, kwargs, out) -> Count:            # pure: (inputs, outputs) -> Count
        x, dim = args[0], arg(args, kwargs, 1, "dim")        # x: (..., L, ...) along dim
        adds = x.numel() - x.numel() // x.shape[dim]         # L - 1 adds per line
        return Count("elementwise", adds=adds, macs=adds)

    register_handler(torch.cumsum, count_cumsum)             # also counts x.cumsum(dim)

or, for one call only, `count_ops(model, shape, handlers={torch.cumsum: count_cumsum})`.

Handlers are keyed by the torch function object (as FlopCounterMode keys by aten op). A torch
function and the torch functions of the same name in torch's namespaces (`torch.cumsum` and
`Tensor.cumsum`) share a handler; a name is resolved the same way, and a name or object that is
no torch function is refused. The built-in handlers (`handlers.builtins()`) are registered
explicitly in one table (`table()`); every count copies it and applies its own `handlers=`.
A module class may be a key too (dnnlab's smooth max layers): the module is then counted as one
call, its handler getting `(module, *args)`, and nothing inside it is counted.

A handler raises `CountError("what is wrong")` for an input it cannot count; the counter turns it
into a ShapeError naming the layer being run. Bias adds are always counted in `adds` and
reported in `bias_adds`; the counter takes them out when `count_bias=False`. An optional
`precheck(args, kwargs)` runs before the op (to name the layer in a clearer error than torch's);
an optional `shortcut(args, kwargs) -> output` makes the op's output (meta tensors of the right
shapes) without running it, on the meta device only (the recurrent layers).

A call with no handler whose name is not in `FREE` (ops that only move, view, create or select
data) and that returns a tensor is listed in the report's `not_counted`, with its module.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class CountError(ValueError):
    """A handler cannot count this call (the counter names the layer)."""


@dataclass(frozen=True)
class Count:
    """What one call costs (docs/opcount.md): the counter makes the row from it.

    family: one of `rows.FAMILIES` or a new name; mults/adds (adds include the bias adds);
    macs: multiply-accumulates for the MAC families, elementary operations otherwise;
    bwd_macs: MACs of the op's backward in a training step; bias_adds: inside `adds`;
    other: comparisons, exp, ...; causal_macs / causal_bwd_macs: attention's unmasked products
    only (None: dense is exact); op: the row's op name (default: the function's name);
    in_shape: the row's input shape (default: the call's first tensor); extra: anything else
    (kept on the row).
    """

    family: str
    mults: int = 0
    adds: int = 0
    macs: int = 0
    bwd_macs: int = 0
    bias_adds: int = 0
    other: int = 0
    causal_macs: int | None = None
    causal_bwd_macs: int | None = None
    op: str | None = None
    in_shape: Sequence[int] | None = None
    extra: Mapping = field(default_factory=dict)


Handler = Callable[[tuple, dict, Any], "Count | Sequence[Count] | None"]
Precheck = Callable[[tuple, dict], None]
Shortcut = Callable[[tuple, dict], Any]


@dataclass(frozen=True)
class Entry:
    """A handler with its optional precheck and shortcut."""

    handler: Handler
    precheck: Precheck | None = None
    shortcut: Shortcut | None = None


# Calls that compute nothing countable: views, reshapes, copies, creation, indexing, selection,
# conversions, random fills (their results are never "not counted").
FREE = set("""
__get__ __getitem__ __setitem__ __len__ __iter__ __format__ __bool__ __index__ __reduce_ex__
__contains__ __hash__ __deepcopy__ __array__ _has_compatible_shallow_copy_type
view view_as reshape reshape_as flatten unflatten permute transpose t swapaxes swapdims movedim
moveaxis contiguous expand expand_as broadcast_to broadcast_tensors repeat repeat_interleave
tile squeeze unsqueeze narrow select index_select gather take take_along_dim masked_select
split split_with_sizes tensor_split chunk unbind cat concat concatenate stack hstack vstack
flip fliplr flipud roll rot90 diagonal diag_embed tril triu tril_ triu_ as_strided unfold
pad constant_pad_nd pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
to type type_as float half double bfloat16 long int short bool byte char cpu cuda clone
detach detach_ requires_grad_ retain_grad register_hook data_ptr numpy tolist item
empty empty_like zeros zeros_like ones ones_like full full_like arange range linspace
logspace eye tensor as_tensor new_empty new_zeros new_ones new_full new_tensor rand randn
randint rand_like randn_like randint_like randperm normal_ uniform_ bernoulli bernoulli_
dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
fill_ zero_ copy_ masked_fill masked_fill_ masked_scatter where index_put index_put_
index_fill index_copy scatter scatter_ embedding embedding_bag one_hot nonzero argwhere
argmax argmin sort argsort topk unique unique_consecutive searchsorted bucketize
meshgrid cartesian_prod resolve_conj resolve_neg view_as_real view_as_complex real imag
size dim numel stride storage_offset is_contiguous is_floating_point element_size
nelement ndimension get_device data grad T mT H mH
""".split())


# -- torch's functions, by name ------------------------------------------------------------------

def _namespaces() -> list:
    import torch.nn.attention.flex_attention as flex
    import torch.nn.functional as F

    return [torch, torch.Tensor, F, torch.linalg, torch.special, torch.fft, torch._C._nn,
            torch._VF, torch._C._VariableFunctions, flex]


@functools.lru_cache(maxsize=1)
def torch_functions() -> dict[str, tuple]:
    """{name: the torch function objects of that `__name__`}: every callable of torch's
    namespaces (torch, Tensor, nn.functional, linalg, special, fft, _VF, flex attention) and
    every function torch.overrides lists as overridable."""
    out: dict[str, list] = {}

    def add(f: Any, alias: str | None = None) -> None:
        name = getattr(f, "__name__", None)
        if not (isinstance(name, str) and callable(f) and not isinstance(f, type)):
            return
        for key in {name, alias or name}:  # Tensor.__rtruediv__ is __rdiv__: both names
            objs = out.setdefault(key, [])
            if not any(o is f for o in objs):
                objs.append(f)
    for ns in _namespaces():
        for attr in dir(ns):
            try:
                add(getattr(ns, attr), attr)
            except Exception:  # noqa: BLE001 - a lazy attribute that cannot load here
                continue
    for fs in torch.overrides.get_overridable_functions().values():
        for f in fs:
            add(f)
    return {k: tuple(v) for k, v in out.items()}


def _is_module_class(key: Any) -> bool:
    return isinstance(key, type) and issubclass(key, torch.nn.Module)


# Tensor methods the counter never sees under their own name: Python's operators reach a
# TorchFunctionMode as the named method (`a + a` arrives as Tensor.add).
UNSEEN = {"__add__": "add", "__radd__": "add", "__iadd__": "add_", "__sub__": "sub",
          "__isub__": "sub_", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul_",
          "__truediv__": "div", "__itruediv__": "div_", "__div__": "div", "__idiv__": "div_",
          "__matmul__": "matmul", "__neg__": "neg", "__abs__": "abs", "__pow__": "pow",
          "__ipow__": "pow_", "__ne__": "ne", "__lt__": "lt", "__le__": "le", "__gt__": "gt",
          "__ge__": "ge", "__mod__": "remainder"}


def _ops_keys(key: Any) -> tuple | None:
    """The keys of an operator: a `torch.library` custom op (CustomOpDef), an OpOverloadPacket
    (its packet and every overload), an OpOverload, a higher-order op, or an "ns::name[.overload]"
    string. None for anything else."""
    from torch._library.custom_ops import CustomOpDef

    if isinstance(key, CustomOpDef):
        key = key._opoverload.overloadpacket
    if isinstance(key, str) and "::" in key:
        ns, _, rest = key.partition("::")
        name, _, overload = rest.partition(".")
        try:
            key = getattr(getattr(torch.ops, ns), name)
            if overload:
                key = getattr(key, overload)
        except (AttributeError, RuntimeError):
            raise ValueError(f"'{key}' is no operator (torch.ops.{ns} has no "
                             f"'{rest}')") from None
    if isinstance(key, torch._ops.OpOverloadPacket):
        return (key, *[getattr(key, o) for o in key.overloads()])
    if isinstance(key, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return (key,)
    return None


def _refuse_unseen(name: str) -> None:
    if name in UNSEEN:
        seen = UNSEEN[name]
        raise ValueError(f"'Tensor.{name}' never reaches the counter: Python's operator arrives "
                         f"as '{seen}'; register torch.{seen} (covers Tensor.{seen}) instead")


def resolve(key: Callable | str | type) -> tuple:
    """The keys a registration covers: a module class itself; a torch function and the torch
    functions of its name; a name's torch functions; an operator (custom op, OpOverloadPacket,
    OpOverload, "ns::name"): the operator and its overloads. Anything else raises ValueError,
    as does a Tensor operator method the counter never sees (`Tensor.__add__`: arrives as
    `Tensor.add`)."""
    if _is_module_class(key):
        return (key,)
    ops = _ops_keys(key)
    if ops is not None:
        return ops
    if isinstance(key, str):
        _refuse_unseen(key)
        objs = torch_functions().get(key)
        if not objs:
            raise ValueError(f"'{key}' is not a torch function (no function of torch, Tensor, "
                             "nn.functional, linalg, special or fft has that name)")
        return objs
    name = getattr(key, "__name__", None)
    if not callable(key) or not isinstance(name, str):
        raise ValueError(f"cannot register a handler for {key!r}: not a torch function")
    objs = torch_functions().get(name, ())
    if not any(o is key for o in objs):
        raise ValueError(f"{key!r} is not a torch function the counter can see (register a "
                         "function of torch, Tensor or nn.functional, an operator (custom op, "
                         "torch.ops.ns.name, 'ns::name'), or a module class)")
    _refuse_unseen(name)
    return objs


def op_name(key: Callable | str | type) -> str:
    """The name a row is labelled with: the function's (or module class's) `__name__`."""
    if isinstance(key, str):
        return key
    ops = _ops_keys(key)
    if ops is not None:
        return str(ops[0])
    name = getattr(key, "__name__", None)
    if not name:
        raise ValueError(f"cannot register a handler for {key!r}: it has no __name__")
    return name


# -- the table ---------------------------------------------------------------------------------

_TABLE: dict = {}  # key (function object or module class) -> Entry; filled by table()


def table() -> dict:
    """The registered handlers (built-in + register_handler), built on first use."""
    if not _TABLE:
        from dnnlab.opcount.handlers import builtins

        for key, entry in builtins().items():
            _TABLE[key] = entry
    return _TABLE


def as_entry(value: Handler | Entry) -> Entry:
    if isinstance(value, Entry):
        return value
    if not callable(value):
        raise TypeError(f"a handler must be callable, got {value!r}")
    return Entry(value)


def with_overrides(base: dict, handlers: Mapping | None) -> dict:
    """A copy of `base` with `handlers` ({torch function, name or module class: handler or
    Entry}; None as the value removes one) applied: one count's own table."""
    out = dict(base)
    for key, value in (handlers or {}).items():
        for k in resolve(key):
            if value is None:
                out.pop(k, None)
            else:
                out[k] = as_entry(value)
    return out


def register_handler(key: Callable | str | type, handler: Handler, *,
                     precheck: Precheck | None = None, replace: bool = False,
                     shortcut: Shortcut | None = None) -> None:
    """Count calls of `key` (a torch function, its name, or a module class) with `handler`,
    in every count from now on. One that already has a handler is refused unless
    `replace=True`; a key that is not a torch function is refused."""
    keys = resolve(key)
    if not callable(handler):
        raise TypeError(f"handler for '{op_name(key)}' must be callable, got {handler!r}")
    entry = Entry(handler, precheck, shortcut)
    current = table()
    taken = [k for k in keys if k in current]
    if taken and not replace:
        raise ValueError(f"'{op_name(key)}' already has a handler "
                         f"({getattr(current[taken[0]].handler, '__name__', '?')}); "
                         "pass replace=True to replace it")
    for k in keys:
        current[k] = entry


def unregister_handler(key: Callable | str | type) -> None:
    """Stop counting `key` (no error when it was not counted)."""
    current = table()
    for k in resolve(key):
        current.pop(k, None)


def handler_of(key: Callable | str | type) -> Entry | None:
    """The registered entry of a torch function, name or module class (None: not counted)."""
    current = table()
    for k in resolve(key):
        if k in current:
            return current[k]
    return None


# -- helpers for handlers ---------------------------------------------------------------------

def arg(args: Sequence, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """The argument at position `i`, or keyword `name`, or `default`."""
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def shape_of(t: Any) -> list:
    """A tensor's shape as a list ([] for anything else)."""
    return list(t.shape) if isinstance(t, torch.Tensor) else []


def needs_grad(t: Any) -> bool:
    """Whether `t` is a tensor that requires grad (its gradient is computed in backward)."""
    return isinstance(t, torch.Tensor) and t.requires_grad
