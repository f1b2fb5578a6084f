"""What a handler and the counter agree on: `Count` (what one call costs), `Entry` (a handler
with its optional precheck and shortcut), `CountError`, the operator families, and the helpers a
handler reads its arguments with. A leaf: it imports nothing else of dnnlab.opcount, so a handler
module, the counter and the dispatch net all depend on it and on nothing of each other.

A handler is a pure `handler(args, kwargs, out) -> Count` (or a list of them, or None: nothing to
count); see `dnnlab.opcount.registry` for how one is registered.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# Families that are multiply-accumulate products (their `macs` are MACs, fvcore's unit).
# `recurrent`: the gate products of RNN/LSTM/GRU layers and cells (docs/opcount.md).
MAC_FAMILIES = ("conv", "linear", "matmul", "attention", "recurrent")
# Families whose `macs` column holds elementary operations (mults + adds + others), the unit
# fvcore uses for such ops.
ELEMENTWISE_FAMILIES = ("bias", "norm", "pool", "elementwise", "smooth_max")
FAMILIES = MAC_FAMILIES + ELEMENTWISE_FAMILIES



class CountError(ValueError):
    """A handler cannot count this call (the counter names the layer)."""


@dataclass(frozen=True)
class Count:
    """What one call costs (docs/opcount.md): the counter makes the row from it.

    family: one of `FAMILIES` or a new name; mults/adds (adds include the bias adds);
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
