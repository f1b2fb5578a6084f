"""Bytes moved by each counted op (`LayerRow.read_bytes`, `write_bytes`, `bwd_bytes`).

The rule (docs/opcount.md "Bytes"), the same for every op, from the call's real tensors at
their dtypes' sizes:
- read: every distinct input tensor of the call once (activations, weights, bias), its
  `numel * element_size`; a linear layer (M x K input, N x K weight) reads
  s (MK + KN [+ N]) bytes and a conv reads its input, weight and bias, s = 4 in float32, 2 in
  float16/bfloat16;
- write: every output tensor once (s MN for the linear layer);
- backward (an op with backward MACs): it reads the output's gradient and the saved inputs
  (the forward's reads) and writes the gradients of the inputs that require grad: the model of
  an unfused autograd kernel.
No cache is modelled: a tensor read by two ops is counted twice, as two kernels read it.
"""
from __future__ import annotations

from typing import Any

import torch


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _distinct(ts: list) -> list:
    seen, out = set(), []
    for t in ts:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def call_bytes(inputs: list, outputs: list) -> tuple[int, int, int]:
    """(read, write, backward) bytes of one call with these input and output tensors."""
    ins, outs = _distinct(inputs), _distinct(outputs)
    read = sum(_nbytes(t) for t in ins)
    write = sum(_nbytes(t) for t in outs)
    grads = sum(_nbytes(t) for t in ins if t.requires_grad and t.is_floating_point())
    return int(read), int(write), int(write + read + grads)


def fill_rows(rows: list, inputs: Any, outputs: Any) -> None:
    """Give the rows one call added its bytes (the first row; a call makes one row)."""
    if not rows:
        return
    read, write, bwd = call_bytes(inputs, outputs)
    row = rows[0]
    row.read_bytes, row.write_bytes = read, write
    row.bwd_bytes = bwd if row.bwd_macs else 0
    floats = [t for t in _distinct(inputs) if t.is_floating_point()]
    row.dtype = str(floats[0].dtype).replace("torch.", "") if floats else ""
