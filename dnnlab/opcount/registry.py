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
layer in a clearer error than torch's own.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Handler = Callable[[Any, str, tuple, dict, Any], None]
Precheck = Callable[[Any, tuple, dict], None]

HANDLERS: dict[str, Handler] = {}
PRECHECKS: dict[str, Precheck] = {}


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
                     precheck: Precheck | None = None, replace: bool = False) -> None:
    """Count calls of `func_or_name` (a torch function or method, or its name) with `handler`.

    A name that already has a handler is refused unless `replace=True` (which also replaces or
    removes its precheck).
    """
    name = op_name(func_or_name)
    if not callable(handler):
        raise TypeError(f"handler for '{name}' must be callable, got {handler!r}")
    if name in HANDLERS and not replace:
        raise ValueError(f"'{name}' already has a handler ({HANDLERS[name].__name__}); "
                         "pass replace=True to replace it")
    HANDLERS[name] = handler
    PRECHECKS.pop(name, None)
    if precheck is not None:
        PRECHECKS[name] = precheck


def unregister_handler(func_or_name: Callable | str) -> None:
    """Stop counting `func_or_name` (no error when it was not counted)."""
    name = op_name(func_or_name)
    HANDLERS.pop(name, None)
    PRECHECKS.pop(name, None)


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
