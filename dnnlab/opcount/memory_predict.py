"""`memory_of`: a training step's memory predicted without allocating (docs/opcount.md "Memory").

The model's parameters and buffers are swapped for fake tensors (torch's FakeTensorMode: a
shape, a dtype and a device, no data) for the length of the call, the optimizer's states are
made with one step on zero gradients, and one step runs under `StepTracker` (torch's
MemTracker with dnnlab's phases, timeline and saved-for-backward count: memory_track.py).
A model built on the meta device works: Llama-2-7B's 27 GB of float32 weights are never made.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dnnlab.core.errors import ConfigError
from dnnlab.opcount.counter import _map  # the one pytree map of the counter (BlockMask too)
from dnnlab.opcount.memory_report import MemoryReport
from dnnlab.opcount.memory_track import (
    OPTIMIZERS,
    PRECISIONS,
    StepTracker,
    init_states,
    make_optimizer,
    run_step,
)

# ops whose meta/fake kernel gives an output of another size than the CPU kernel's and that
# StepTracker cannot size: the prediction is then too low, and says so (MemoryReport.caveats)
UNSIZED = {"mkldnn_rnn_layer": "a oneDNN RNN workspace of unknown size outside an LSTM (an "
                               "empty tensor on fake tensors)",
           "mkldnn_rnn_layer_backward": "scratch inside the call that docs/math.md (4b) sizes "
                                        "in float32 only (bfloat16 here): process_peak_bytes "
                                        "leaves it out"}


def check_step(optimizer: str | None, precision: str) -> str:
    """The precision as a string; one line naming the key when either is unknown."""
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise ConfigError(f"memory.optimizer={optimizer!r}: expected one of "
                          f"{', '.join(OPTIMIZERS)} or null")
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"memory.precision={precision!r}: expected one of "
                          f"{', '.join(PRECISIONS)}")
    return precision


class swap_state:  # noqa: N801 - a context manager, used like a function
    """Replace every parameter and buffer of `model` by `make(t)` (tied ones stay tied), and
    put the originals back on exit."""

    def __init__(self, model: torch.nn.Module, make):
        self.model, self.make, self.saved = model, make, []

    def __enter__(self) -> torch.nn.Module:
        memo: dict[int, Any] = {}
        for mod in self.model.modules():
            self.saved.append((mod, dict(mod._parameters), dict(mod._buffers)))
            for name, p in mod._parameters.items():
                if p is not None:
                    if id(p) not in memo:
                        memo[id(p)] = torch.nn.Parameter(self.make(p),
                                                         requires_grad=p.requires_grad)
                    mod._parameters[name] = memo[id(p)]
            for name, b in mod._buffers.items():
                if b is not None:
                    if id(b) not in memo:
                        memo[id(b)] = self.make(b)
                    mod._buffers[name] = memo[id(b)]
        return self.model

    def __exit__(self, *exc) -> None:
        for mod, params, buffers in self.saved:
            mod._parameters.clear()
            mod._parameters.update(params)
            mod._buffers.clear()
            mod._buffers.update(buffers)


def call_of(input_shape, inputs) -> tuple[tuple, dict]:
    """(args, kwargs): one float32 tensor of `input_shape`, or `inputs` (a tensor, a tuple of
    positional arguments, a dict of keyword arguments)."""
    if (input_shape is None) == (inputs is None):
        raise ConfigError("give either input_shape or inputs (what the model is called with)")
    if inputs is None:
        shape = [int(s) for s in input_shape]
        if not shape or any(s < 1 for s in shape):
            raise ConfigError(f"input_shape={list(input_shape)}: every size must be >= 1")
        return (torch.empty(shape, device="meta"),), {}
    if isinstance(inputs, tuple):
        return inputs, {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return (inputs,), {}


def tensors_in(obj: Any, depth: int = 4) -> list:
    """Every tensor inside `obj` (tuples, lists, dicts, and the attributes of objects such as
    transformers' Cache and its layers), to `depth` levels."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth == 0 or obj is None or isinstance(obj, (str, int, float, bool)):
        return []
    if isinstance(obj, Mapping):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        items = list(vars(obj).values())
    else:
        return []
    return [t for o in items for t in tensors_in(o, depth - 1)]


def unique_bytes(tensors: list) -> int:
    """Bytes of the distinct storages under `tensors`."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def _batch(args: tuple, kwargs: dict) -> int:
    first = next((t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() else 1


def kv_cache_bytes(model: torch.nn.Module, batch: int, context: int, precision: str = "32",
                   device: str = "cpu") -> int:
    """Bytes of the key/value cache an HF causal LM holds at `context` tokens (what a decode
    step reads): a no_grad forward of `context` token ids on fake tensors with use_cache=True,
    the distinct storages of its `past_key_values`."""
    from dnnlab.opcount.memory_track import autocast

    if not hasattr(getattr(model, "config", None), "use_cache"):
        raise ConfigError(f"kv_context: {type(model).__name__} is not a Hugging Face causal "
                          f"LM (no config.use_cache)")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, swap_state(model, lambda t: torch.empty(t.shape, dtype=t.dtype, device=device)):
        ids = torch.zeros(batch, context, dtype=torch.long, device=device)
        with torch.no_grad(), autocast(precision, device):
            out = model(input_ids=ids, use_cache=True)
        if isinstance(out, Mapping):
            cache = out["cache"] if "cache" in out else out["past_key_values"]
        else:
            cache = out[1]
        return unique_bytes(tensors_in(cache))


def memory_of(model: torch.nn.Module, input_shape=None, *, inputs: Any = None,
              train: bool = True, optimizer: str | None = "adam", precision: str = "32",
              kv_context: int | None = None, device: str = "cpu") -> MemoryReport:
    """The memory of one steady-state training step of `model` (its second step: the
    optimizer's states exist), or with `train=False` of a forward under no_grad, predicted on
    fake tensors: nothing the size of the model or its activations is allocated.

    `optimizer`: sgd (momentum: one state per parameter), adam / adamw (two), None.
    `precision`: 32, or bf16 / fp16 under torch.autocast with float32 weights, gradients and
    optimizer states (as trainer.precision trains). `kv_context`: also the key/value cache of
    an HF causal LM at that many tokens (`kv_cache_bytes`). `device`: the device type the fake
    tensors claim ("cpu": the CPU's op decompositions, as `measure_memory` runs them), or
    "meta" (plain meta tensors: faster, precision 32 only).
    """
    precision = check_step(optimizer, precision)
    if not train:
        optimizer = None
    args, kwargs = call_of(input_shape, inputs)
    if device == "meta":  # meta kernels: fewer, faster ops; no autocast
        if precision != "32":
            raise ConfigError(f"memory.precision={precision}: autocast needs a real device "
                              f"type (device='cpu' fakes CPU tensors), not meta")
        mode = contextlib.nullcontext()
    else:
        mode = FakeTensorMode(allow_non_fake_inputs=True)

    def fake(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=t.dtype, device=device)

    was_training = model.training
    model.train(train)
    try:
        with mode, swap_state(model, fake):
            args, kwargs = _map(args, fake), _map(kwargs, fake)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = make_optimizer(optimizer, params, foreach=False) if train else None
            init_states(opt, params)
            tracker = StepTracker()
            tracker.track_external(model, opt, *[t for t in [*args, *kwargs.values()]
                                                 if isinstance(t, torch.Tensor)])
            start = sum(tracker.live().values())
            run_step(tracker, model, lambda: model(*args, **kwargs), opt, train=train,
                     precision=precision, device_type=device)
    finally:
        model.train(was_training)
    report = MemoryReport(peak_bytes=max(tracker.peak, start),
                          by_category=dict(tracker.peak_snap) or tracker.live(),
                          peak_at=tracker.peak_at, start_bytes=start, end_by_category=tracker.end,
                          saved_by_module=tracker.saved_by_module(),
                          timeline=tracker.timeline, train=train, optimizer=optimizer,
                          precision=precision)
    report.process_peak_bytes = max(tracker.process_peak, report.peak_bytes)
    report.scratch_bytes = tracker.process_scratch if tracker.process_peak > report.peak_bytes \
        else 0
    report.caveats = [f"may be too low: aten.{op} has {why}"
                      for op, why in UNSIZED.items() if op in tracker.unsized]
    if device == "meta" and any(isinstance(m, torch.nn.LSTM) and not m.proj_size
                                for m in model.modules()):
        report.caveats.append("may be off: on meta an nn.LSTM runs torch's step-by-step "
                              "kernels, on the CPU oneDNN's (device='cpu' predicts those)")
    if kv_context is not None:
        report.kv_context = int(kv_context)
        report.kv_cache_bytes = kv_cache_bytes(model, _batch(args, kwargs), int(kv_context),
                                               precision, device)
    return report
