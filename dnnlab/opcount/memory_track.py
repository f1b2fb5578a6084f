"""The engine under `memory_of` and `measure_memory`: one training step run under torch's
`MemTracker` (torch.distributed._tools.mem_tracker), on fake tensors or real ones.

Torch's part: `MemTracker` follows every tensor storage an op creates with a weakref (its bytes
leave the count when the storage dies), sorts parameters, buffers and gradients by hooks on the
parameters, optimizer states by the optimizer, and knows the module being run (`ModTracker`,
forward and backward). dnnlab's part (`StepTracker`, `run_step`):
- the phase (forward, backward, optimizer step) is set by the step itself, so a tensor an op
  creates in the optimizer step is a temporary, not an optimizer state (MemTracker calls
  everything created in `step()` a state);
- the timeline (live bytes after each op) and where the peak occurs (phase, op, module);
- the bytes each module saves for backward (`saved_tensors_hooks`, one count per storage);
- on fake tensors, oneDNN's LSTM workspace at the size the CPU allocates (rnn_workspace.py:
  the fake kernel of `aten.mkldnn_rnn_layer` returns an empty one), and the scratch its
  backward allocates inside the call, no tensor (`process_peak`: live tensors plus it);
- the step: steady state (the optimizer's states exist before it, as in a second step), the
  optimizer kind, torch.autocast for bf16/fp16 with float32 weights (as trainer.precision
  trains: dnnlab/train/step.py), the loss in float32.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.utils._pytree import tree_map_only

from dnnlab.opcount.rnn_workspace import kernel_scratch, size_fake_workspace

CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "temporaries")
# MemTracker's reference types -> the report's five categories (buffers count as parameters,
# the input, tracked from outside, as an activation)
_CATEGORY = {_MemRefType.PARAM: "parameters", _MemRefType.BUFFER: "parameters",
             _MemRefType.GRAD: "gradients", _MemRefType.OPT: "optimizer",
             _MemRefType.ACT: "activations", _MemRefType.OTH: "activations",
             _MemRefType.TEMP: "temporaries"}
OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_optimizer(name: str | None, params, foreach: bool | None = None):
    """SGD with momentum (one state per parameter), Adam or AdamW (two), or None."""
    if name is None:
        return None
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, foreach=foreach)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)} or None, got {name!r}")


def init_states(optimizer, params: list) -> None:
    """Create the optimizer's states with one step on zero gradients: the step measured next is
    a steady-state (second) step, as in training after the first batch."""
    if optimizer is None:
        return
    for p in params:
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    foreach = [g.get("foreach") for g in optimizer.param_groups]
    for g in optimizer.param_groups:  # the same states, made in a few multi-tensor ops
        g["foreach"] = True
    optimizer.step()
    for g, f in zip(optimizer.param_groups, foreach):
        g["foreach"] = f
    optimizer.zero_grad(set_to_none=True)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _deepest(parents) -> str:
    """The innermost running module of ModTracker's `parents` ('' for the model itself)."""
    names = [p for p in parents if p != "Global"]
    if not names:
        return ""
    best = max(names, key=lambda p: p.count("."))
    return best.split(".", 1)[1] if "." in best else ""  # drop the root's class name


class StepTracker(MemTracker):
    """MemTracker with a phase set by the step, a timeline, the peak's place and the bytes
    each module saves for backward."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.timeline: list[tuple[str, str, str, int]] = []  # (phase, op, module, live bytes)
        self.peak = -1
        self.peak_at: dict = {}
        self.peak_snap: dict = {}
        self.saved: dict[int, tuple[str, int]] = {}  # storage -> (module, bytes)
        self._skip_saved: set[int] = set()
        self.end: dict = {}  # {category: bytes} live at the end of the step
        self.unsized: set[str] = set()  # ops whose fake output is smaller than the CPU's
        # live tensors plus the scratch (no tensor) of the op running, at their most
        self.process_peak, self.process_scratch = -1, 0

    def _register_global_optimizer_hook(self) -> None:  # the step sets the phase instead
        self._optimizer_hook_handles = None

    def _update_peak_stats(self, peak_state) -> None:  # per-module peaks: not used, and slow
        return None

    def live(self) -> dict:
        """{category: bytes} now, all devices together."""
        out = dict.fromkeys(CATEGORIES, 0)
        for snap in self._curr_mem_snap.values():
            for ref, n in snap.items():
                if ref in _CATEGORY:
                    out[_CATEGORY[ref]] += n
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        res = func(*args, **(kwargs or {}))
        res, unsized = size_fake_workspace(func, args, res)  # oneDNN's LSTM workspace
        if unsized:
            self.unsized.add(unsized)
        ref = _MemRefType.ACT if self.phase == "forward" else _MemRefType.TEMP
        tree_map_only(torch.Tensor, lambda t: self._track(ref, t), res)
        live = self.live()
        total = sum(live.values())
        module = _deepest(self._mod_tracker.parents)
        self.timeline.append((self.phase, str(func.overloadpacket.__name__), module, total))
        if total > self.peak:
            self.peak, self.peak_snap = total, live
            self.peak_at = {"phase": self.phase, "op": f"aten.{func.overloadpacket.__name__}",
                            "module": module, "index": len(self.timeline) - 1}
        scratch = kernel_scratch(func, args)  # oneDNN's LSTM backward, on fake tensors
        if scratch is None:  # a scratch (4b) does not size: the process peak is too low
            self.unsized.add("mkldnn_rnn_layer_backward")
            scratch = 0
        if total + scratch > self.process_peak:
            self.process_peak, self.process_scratch = total + scratch, scratch
        return res

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """saved_tensors_hooks' pack: count a saved storage once, under the running module."""
        key = _storage_key(t)
        if key not in self._skip_saved and key not in self.saved:
            self.saved[key] = (_deepest(self._mod_tracker.parents),
                               t.untyped_storage().nbytes())
        return t

    def saved_by_module(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for module, n in self.saved.values():
            out[module] = out.get(module, 0) + n
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def first_float(out: Any) -> torch.Tensor | None:
    """The model's first floating-point output (logits, last_hidden_state, out[0])."""
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if hasattr(out, "to_tuple"):  # transformers' ModelOutput
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = first_float(o)
            if t is not None:
                return t
    return None


def step_loss(out: Any) -> torch.Tensor:
    """Cross-entropy of the first floating output against class 0, in float32 whatever the
    precision (as the trainer's loss: dnnlab/train/step.py); a 1-d output: its float sum."""
    t = first_float(out)
    if t is None:
        raise ValueError("the model returned no floating-point tensor to take a loss of")
    t = t.float()
    if t.dim() < 2:
        return t.sum()
    t = t.flatten(0, -2)  # (rows, classes)
    return F.cross_entropy(t, torch.zeros(t.shape[0], dtype=torch.long, device=t.device))


def autocast(precision: str, device_type: str):
    """torch.autocast at bf16/fp16 on the step's device (a no-op context at 32)."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_DTYPES[precision])


def run_step(tracker: StepTracker, model: torch.nn.Module, call: Callable[[], Any],
             optimizer, *, train: bool, precision: str, device_type: str) -> None:
    """One step under `tracker`: forward (under no_grad when not `train`), then backward of the
    float32 loss and the optimizer step. The tracker is entered here; the model, its optimizer
    (states already made) and the inputs were tracked before (`track_external`)."""
    params = [p for p in model.parameters()]
    tracker._skip_saved = {_storage_key(p) for p in params}
    tracker._skip_saved |= {_storage_key(b) for b in model.buffers()}
    with tracker, warnings.catch_warnings():
        # ModTracker warns when a module runs outside its parent's call (HF rotary
        # embeddings, shared modules); only the innermost name is used here
        warnings.filterwarnings("ignore", message="The module hierarchy tracking")
        tracker.phase = "forward"
        if not train:
            with torch.no_grad(), autocast(precision, device_type):
                call()
            tracker.end = tracker.live()
            return
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda t: t):
            with autocast(precision, device_type):
                out = call()
            loss = step_loss(out)
        tracker.phase = "backward"
        loss.backward()
        del loss
        if optimizer is not None:
            tracker.phase = "optimizer"
            optimizer.step()
            tracker._track_optimizer_states(_MemRefType.OPT, optimizer)
        tracker.end = tracker.live()
        del out
