"""Parameter and buffer counts of a model (`OpReport.params`, `OpReport.buffers`).

Every distinct tensor is counted once: tied weights (GPT-2's `lm_head.weight` is
`transformer.wte.weight`) and shared modules count once, as torchinfo and fvcore count them.
Trainable = `requires_grad`. Buffers (batch-norm running statistics, position ids, masks) are
not parameters and are reported apart. Shapes only: meta models are counted the same.
"""
from __future__ import annotations

import torch


def param_counts(model: torch.nn.Module) -> dict:
    """{"total": int, "trainable": int}: elements of the distinct parameter tensors."""
    seen: set = set()
    total = trainable = 0
    for p in model.parameters():  # remove_duplicate=True: a tied tensor once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": int(total), "trainable": int(trainable)}


def buffer_counts(model: torch.nn.Module) -> dict:
    """{"total": int, "tensors": int}: elements and number of the distinct buffers."""
    seen: set = set()
    total = 0
    for b in model.buffers():
        if id(b) in seen:
            continue
        seen.add(id(b))
        total += b.numel()
    return {"total": int(total), "tensors": len(seen)}


def module_params(model: torch.nn.Module) -> dict:
    """{module path: parameter elements of its subtree}, each distinct tensor counted once, in
    the first module (in `named_modules` order) that holds it."""
    owner: dict = {}
    out: dict = {}
    for path, m in model.named_modules():
        out[path] = 0
        for p in m.parameters(recurse=False):
            owner.setdefault(id(p), (path, p.numel()))
    for path, n in owner.values():
        parts = path.split(".") if path else []
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            out[key] = out.get(key, 0) + int(n)
    return out
