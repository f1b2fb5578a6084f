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
no torch function is refused. Each built-in handler declares its keys beside its body
(`@handles(...)` in `handlers.py`); `table()` starts from the table they declare
(`handlers.builtins()`), and every count copies it and applies its own `handlers=`. What a
handler returns and reads its arguments with (`Count`, `Entry`, `CountError`, `arg`) lives in
the leaf `protocol.py`; name resolution (`resolve`, `FREE`) in `names.py`.
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

from collections.abc import Callable, Mapping

from dnnlab.opcount.handlers import builtins
from dnnlab.opcount.names import FREE, op_name, resolve, torch_functions
from dnnlab.opcount.protocol import (
    Count,
    CountError,
    Entry,
    Handler,
    Precheck,
    Shortcut,
    arg,
    needs_grad,
    shape_of,
)

__all__ = ["FREE", "Count", "CountError", "Entry", "Handler", "Precheck", "Shortcut", "arg",
           "as_entry", "builtins", "handler_of", "needs_grad", "op_name", "register_handler",
           "resolve", "shape_of", "table", "torch_functions", "unregister_handler",
           "with_overrides"]


# -- the table ---------------------------------------------------------------------------------

_TABLE: dict = {}  # key (function object or module class) -> Entry; filled by table()


def table() -> dict:
    """The registered handlers (built-in + register_handler), built on first use."""
    if not _TABLE:
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
