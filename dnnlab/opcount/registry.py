"""Which torch calls the counter counts, and how: one handler per function name.

The counter (`count_ops`) sees every torch call of a model through a `TorchFunctionMode`; a call
whose function name has a handler here is run, then handed to it with its real shapes. The
built-in handlers (`dnnlab.opcount.handlers`: conv, linear, matmul, attention, norms, pools,
elementwise ops, smooth max) are registered this way too. To count another op:

    import torch
    from dnnlab.opcount import register_handler
    from dnnlab.opcount.registry import arg, shape_of

    def count_cumsum(counter, name, args, kwargs, out):
        x, dim = args[0], arg(args, kwargs, 1, "dim")       # x: (..., L, ...) along dim
        adds = x.numel() - x.numel() // x.shape[dim]         # L - 1 adds per line
        counter.add(name, "elementwise", shape_of(x), shape_of(out), mults=0, adds=adds,
                    macs=adds)

    register_handler(torch.cumsum, count_cumsum)             # also counts x.cumsum(dim)

A handler is `handler(counter, name, args, kwargs, out) -> None`; it adds rows with
`counter.add(op, family, in_shape, out_shape, mults, adds, macs, bwd=0, bias_adds=0, other=0)`
(family: one of `rows.FAMILIES` or a new name; `macs` are multiply-accumulates for the MAC
families, elementary operations otherwise; `bwd`: MACs of the op's backward in a training step),
reads `counter.count_bias`, and raises `counter.fail("what is wrong")`, a ShapeError naming the
layer being run. An optional `precheck(counter, args, kwargs)` runs before the op, to name the
layer in a clearer error than torch's own; an optional `shortcut(args, kwargs) -> output` makes
the op's output (meta tensors of the right shapes) without running it, on the meta device only
(the recurrent layers: no per-time-step work).

A call with no handler whose name is not in `FREE` (ops that only move, view, create or select
data) and that returns a tensor is listed in the report's `not_counted`, with its module.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Handler = Callable[[Any, str, tuple, dict, Any], None]
Precheck = Callable[[Any, tuple, dict], None]

HANDLERS: dict[str, Handler] = {}
PRECHECKS: dict[str, Precheck] = {}
SHORTCUTS: dict[str, Callable[[tuple, dict], Any]] = {}

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


def op_name(func_or_name: Callable | str) -> str:
    """The name a call is looked up by: the function's `__name__` (`torch.cumsum` and
    `Tensor.cumsum` are both `cumsum`), or the string itself."""
    if isinstance(func_or_name, str):
        name = func_or_name
    else:
        name = getattr(func_or_name, "__name__", None)
    if not name:
        raise ValueError(f"cannot register a handler for {func_or_name!r}: it has no __name__")
    return name


def register_handler(func_or_name: Callable | str, handler: Handler, *,
                     precheck: Precheck | None = None, replace: bool = False,
                     shortcut: Callable[[tuple, dict], Any] | None = None) -> None:
    """Count calls of `func_or_name` (a torch function or method, or its name) with `handler`.

    A name that already has a handler is refused unless `replace=True` (which also replaces or
    removes its precheck and shortcut).
    """
    name = op_name(func_or_name)
    if not callable(handler):
        raise TypeError(f"handler for '{name}' must be callable, got {handler!r}")
    if name in HANDLERS and not replace:
        raise ValueError(f"'{name}' already has a handler ({HANDLERS[name].__name__}); "
                         "pass replace=True to replace it")
    HANDLERS[name] = handler
    PRECHECKS.pop(name, None)
    SHORTCUTS.pop(name, None)
    if precheck is not None:
        PRECHECKS[name] = precheck
    if shortcut is not None:
        SHORTCUTS[name] = shortcut


def unregister_handler(func_or_name: Callable | str) -> None:
    """Stop counting `func_or_name` (no error when it was not counted)."""
    name = op_name(func_or_name)
    HANDLERS.pop(name, None)
    PRECHECKS.pop(name, None)
    SHORTCUTS.pop(name, None)


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
