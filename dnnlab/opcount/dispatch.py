"""The dispatch-level net under the counter's function layer: the aten ops that really run.

The function layer (`counter._CountMode`, a `TorchFunctionMode`) sees the torch calls made from
Python. Work below it is invisible there: a TorchScript module or function (its ops run in the
C++ interpreter), a `torch.library` custom op's kernel, a higher-order op, an aten kernel called
directly. `DispatchNet`, a `TorchDispatchMode` entered under the function mode, sees every aten
op that runs and counts:

- an op with a handler registered for it (an `OpOverload`, its packet, a custom op), and
- the product ops FlopCounterMode has a formula for (`PRODUCTS`: mm, addmm, bmm, baddbmm,
  _scaled_mm, convolution and its backward, every SDPA kernel, varlen attention, the
  flex_attention higher-order op), with torch's own formulas (`torch.utils.flop_counter.
  flop_registry`), FLOPs / 2 = MACs (docs/math.md (2): one MAC, a multiplication and an add),

each as a row under the module being run. It is quiet while a function-level handler's call
runs (that call is counted already: nothing is counted twice) and inside a module counted as a
whole. An op that computes, runs outside every function-level call (TorchScript) and is counted
by neither layer is listed in `not_counted`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from dnnlab.opcount.names import FREE
from dnnlab.opcount.protocol import Count, needs_grad, shape_of

aten = torch.ops.aten

# The family of each product op (by packet); the SDPA kernels return (out, ...) tuples.
# (an addmm below the function layer is a Linear's or anything's: matmul, as mm)
_MATMUL = {aten.mm: "matmul", aten.bmm: "matmul", aten.baddbmm: "matmul",
           aten._scaled_mm: "matmul", aten.addmm: "matmul"}
_CONV = {aten.convolution, aten._convolution, aten.cudnn_convolution,
         aten.convolution_overrideable, aten._slow_conv2d_forward}
_SDPA_FWD = {aten._scaled_dot_product_efficient_attention,
             aten._scaled_dot_product_flash_attention,
             aten._scaled_dot_product_cudnn_attention}
_ATTN_FWD = {aten._flash_attention_forward, aten._efficient_attention_forward}
# Kernels that recompute q k^T in their backward (flash, efficient, cudnn): the
# `attention_backward="recompute"` convention charges that product to them.
_ATTN_BWD = {aten.convolution_backward,
             aten._scaled_dot_product_efficient_attention_backward,
             aten._scaled_dot_product_flash_attention_backward,
             aten._scaled_dot_product_cudnn_attention_backward,
             aten._flash_attention_backward, aten._efficient_attention_backward}


def _flex_hops() -> tuple:
    from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward

    return flex_attention, flex_attention_backward


def products() -> set:
    """The ops the net counts without a registered handler: FlopCounterMode's registry (read
    when called: `torch.nn.attention.varlen` adds its op on import)."""
    return set(flop_registry)


def family_of(op: Any) -> str:
    if op in _MATMUL:
        return _MATMUL[op]
    if op in _CONV or op is aten.convolution_backward:
        return "conv"
    return "attention"


def _name(op: Any) -> str:
    return getattr(op, "__name__", None) or getattr(op, "_name", None) or str(op)


def flop_handler(op: Any):
    """A handler (args, kwargs, out) -> Count from FlopCounterMode's formula of `op`: MACs =
    FLOPs / 2; mults = MACs, adds = MACs - outputs (+ the outputs for addmm/baddbmm's added
    input, reported as bias adds); backward by the rule of docs/math.md (3b): each product's
    input gradients cost its forward MACs (attention: the math path's 4 products, twice the
    forward; `extra['recompute_bwd_macs']` is the q k^T product a recomputing kernel adds)."""
    formula = flop_registry[op]
    fam = family_of(op)
    name = _name(op)

    def count(args, kwargs, out) -> Count:
        macs = int(formula(*args, **kwargs, out_val=out)) // 2
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        outputs = first.numel() if isinstance(first, torch.Tensor) else 0
        extra: dict = {"level": "dispatch"}
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if op in _ATTN_BWD or op in _flex_hops()[1:]:
            # a backward kernel run inside the counted call: its work is forward work here
            return Count(fam, macs, max(macs - outputs, 0), macs, op=name,
                         in_shape=shape_of(tensors[0]) if tensors else None, extra=extra)
        bias = outputs if op in (aten.addmm, aten.baddbmm) else 0
        if fam == "attention":
            q, k = tensors[0], tensors[1]
            grads = any(needs_grad(t) for t in tensors[:3])
            bwd = 2 * macs if grads else 0
            if grads and q.dim() >= 2 and k.dim() >= 2:
                rows = macs // max(q.shape[-1] + tensors[2].shape[-1], 1)  # B H L S
                extra["recompute_bwd_macs"] = rows * q.shape[-1]
            return Count(fam, macs, max(macs - outputs, 0), macs, bwd, op=name,
                         in_shape=shape_of(q), extra=extra)
        a, b = (tensors[1], tensors[2]) if bias else (tensors[0], tensors[1])
        bwd = macs * (int(needs_grad(a)) + int(needs_grad(b)))
        return Count(fam, macs, max(macs - outputs, 0) + bias, macs, bwd, bias, op=name,
                     in_shape=shape_of(a), extra=extra)
    return count


class DispatchNet(TorchDispatchMode):
    """Counts the aten ops no function-level handler counted (module docstring)."""

    supports_higher_order_operators = True

    def __init__(self, mode: Any):
        super().__init__()
        self.mode = mode  # the function layer (_CountMode): its rows, module stack, table
        self.quiet = 0  # > 0 while a function-level handler's call runs
        self.depth = 0  # > 0 inside a function-level call without a handler
        self.counted = 0  # rows this net added (the function layer reads it)
        self._handlers: dict = {}  # op packet -> flop_handler
        self._products = products()
        self._table = {k: v for k, v in mode.table.items()
                       if isinstance(k, (torch._ops.OpOverload, torch._ops.OpOverloadPacket,
                                         torch._ops.HigherOrderOperator))}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.quiet or self.mode.modules.opaque:
            return func(*args, **kwargs)
        with torch._C.DisableTorchFunction():  # the function layer must not see this re-call
            if isinstance(func, torch._ops.HigherOrderOperator):
                packet = func
            else:
                packet = func.overloadpacket
            entry = self._table.get(func) or self._table.get(packet)
            if entry is None and packet not in self._products:
                out = func(*args, **kwargs)
                if isinstance(func, torch._ops.HigherOrderOperator):  # its ops ran unseen
                    if not self.depth:
                        self.mode.note_uncounted(f"higher_order.{func.name()}")
                    return out
                if not self.depth and not func.is_view and packet.__name__ not in FREE:
                    self.mode.note_uncounted(f"{packet._qualified_op_name.replace('::', '.')}")
                return out
            out = func(*args, **kwargs)
            if entry is not None:
                handler, name = entry.handler, _name(packet)
            else:
                handler = self._handlers.get(packet)
                if handler is None:
                    handler = self._handlers[packet] = flop_handler(packet)
                name = _name(packet)
            before = len(self.mode.rows)
            self.mode.record(handler, name, args, kwargs, out, _tensors(args, kwargs))
            self.counted += len(self.mode.rows) - before
            return out


def _tensors(args, kwargs) -> list:
    out = [a for a in args if isinstance(a, torch.Tensor)]
    return out + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]


def block_pairs(mask: tuple, batch: int, heads: int, L: int, S: int) -> int | None:
    """The (query, key) pairs of the blocks a flex_attention block mask computes (the
    `BlockMask.as_tuple()` the higher-order op gets), over the batch and heads (the mask's B
    and H broadcast), exact at the ragged last blocks: block (i, j) holds
    min(Q_BLOCK, L - i Q_BLOCK) x min(KV_BLOCK, S - j KV_BLOCK) pairs. None when the block
    tables cannot be read (meta tensors made from no real mask)."""
    qb, kb = int(mask[-3]), int(mask[-2])
    tables = [(mask[2], mask[3]), (mask[4], mask[5])]
    total = 0
    for n, ix in tables:
        if n is None:
            continue
        if n.is_meta:
            n, ix = getattr(n, "dnnlab_values", (None, None))
            if n is None:
                return None
        n, ix = n.cpu().long(), ix.cpu().long()
        nb, nh, nq = n.shape
        rows = torch.clamp(L - torch.arange(nq) * qb, 0, qb)  # (Q blocks,)
        cols = torch.clamp(S - ix * kb, 0, kb)  # (B, H, Q blocks, KV slots)
        keep = torch.arange(ix.shape[-1]) < n.unsqueeze(-1)  # a row's first n slots
        per = (cols * keep).sum(-1) * rows  # (B, H, Q blocks)
        total += int(per.sum()) * (batch // nb) * (heads // nh)
    return total
