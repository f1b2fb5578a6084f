"""`measure_memory`: the same report as `memory_of`, from a real training step.

The measured step is a steady-state one, as `memory_of` predicts: one unmeasured warm-up step
runs first (the same inputs, the same step), so the optimizer's states are real and exist
before the measured step starts, and every kernel has already been called once (oneDNN's JIT
code, primitive caches and GEMM buffers are made at a kernel's first call and stay: they are
not tensors, and a second training step does not pay them again). The second step then runs
under the same `StepTracker` (torch's MemTracker following every storage by weakref): the live
tensor bytes by category at their peak.

Beside it, what the process saw: its peak resident set during the second step minus its
resident set just before it (`rss_growth_bytes`; Linux's VmHWM, reset through
/proc/self/clear_refs; elsewhere resource.getrusage's ru_maxrss, which cannot be reset and then
says less). Before that baseline is read, the warm-up step's tensors are freed (their gradients
set to None, gc.collect) and, on glibc, malloc_trim(0) hands the heap's free pages back to the
kernel: without it glibc keeps the blocks the warm-up step freed, the second step reuses pages
already resident, and its RSS growth says less than the tensors it needs. The baseline is the
resident set once only the step's starting tensors, the code and the kernels' caches are left,
so the growth is what the step itself adds. On CUDA, torch.cuda.max_memory_allocated over the
step too. A page counts in the RSS only once written, and oneDNN's LSTM leaves much of its
workspace unwritten (docs/opcount.md): so during the measured step glibc writes every block as
it hands it out (mallopt M_PERTURB, `rss_touched`), and the RSS growth counts what the step
allocates, written or not, as a GPU allocator's counter does. Scratch a kernel allocates and
frees inside a call, no tensor, is in the RSS and not in the live-tensor peak (the prediction's
`process_peak_bytes` holds the part it knows: docs/math.md (4b)).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from dnnlab.core.errors import ConfigError
from dnnlab.opcount.memory_predict import _map, call_of, check_step, swap_state
from dnnlab.opcount.memory_report import MemoryReport
from dnnlab.opcount.memory_track import StepTracker, make_optimizer, run_step

_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process (VmHWM); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak resident set since the last reset (or since it started)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else peak_rss_bytes()


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


M_PERTURB = -6  # glibc's mallopt parameter: fill each block as malloc hands it out


@contextlib.contextmanager
def touched_allocations():
    """Inside the block glibc writes every block malloc hands out (and every block freed), so
    an allocation's pages are resident from the start, written by the kernel or not. Yields
    whether it could (glibc only); the old setting (MALLOC_PERTURB_, else off) comes back."""
    libc = _libc()
    ok = False
    if libc is not None:
        try:
            ok = bool(libc.mallopt(M_PERTURB, 0xA5))
        except AttributeError:
            ok = False
    try:
        yield ok
    finally:
        if ok:
            libc.mallopt(M_PERTURB, _perturb_env())


def _perturb_env() -> int:
    """The process's MALLOC_PERTURB_ as glibc reads it (a C integer: 0x5a, 90; anything else
    0). GLIBC_TUNABLES' glibc.malloc.perturb is not read: a process started with it gets it
    off after a measurement."""
    try:
        return int(os.environ.get("MALLOC_PERTURB_", "0"), 0) & 0xFF
    except ValueError:
        return 0


def trim_heap() -> bool:
    """glibc's malloc_trim(0): give the heap's free pages back to the kernel, so that the
    resident set holds what is in use; False where there is no glibc."""
    libc = _libc()
    try:
        libc.malloc_trim(ctypes.c_size_t(0))
        return True
    except AttributeError:  # no libc, or not glibc
        return False


def _real(t: torch.Tensor, device: str) -> torch.Tensor:
    if t.device.type == "meta":
        t = (torch.randn(t.shape, dtype=t.dtype) if t.is_floating_point()
             else torch.zeros(t.shape, dtype=t.dtype))
    return t.to(device)


def measure_memory(model: torch.nn.Module, input_shape=None, *, inputs: Any = None,
                   train: bool = True, optimizer: str | None = "adam", precision: str = "32",
                   device: str = "cpu") -> MemoryReport:
    """Run a warm-up step of `model`, then one steady-state training step, the second, and
    return what that step held (real weights: a model on meta gets zero ones, integer buffers
    ones, as dnnlab.opcount.build.materialize, with tied weights kept tied and the model given
    back as it was; a real model's weights are updated by both steps): `peak_bytes` and
    `by_category` of live tensors, and in `measured` the RSS growth over the second step
    (rss_growth_bytes, from rss_start_bytes, the resident set after the warm-up's tensors are
    freed and the heap trimmed) and, on CUDA, max_memory_allocated growth (cuda_growth_bytes,
    cuda_peak_bytes)."""
    precision = check_step(optimizer, precision)
    if precision == "fp16" and device == "cpu":
        raise ConfigError("memory.precision=fp16: float16 training needs CUDA; use bf16 on CPU "
                          "(as trainer.precision)")
    if not train:
        optimizer = None
    args, kwargs = call_of(input_shape, inputs)
    args, kwargs = _map(args, lambda t: _real(t, device)), _map(kwargs, lambda t: _real(t, device))
    with swap_state(model, lambda t: _weight(t, device)):
        return _measure(model, args, kwargs, train, optimizer, precision, device)


def _weight(t: torch.Tensor, device: str) -> torch.Tensor:
    if t.device.type != "meta":
        return t.detach().to(device)
    if t.is_floating_point():
        return torch.zeros(t.shape, dtype=t.dtype, device=device)
    return torch.ones(t.shape, dtype=t.dtype, device=device)


def _measure(model, args, kwargs, train, optimizer, precision, device) -> MemoryReport:
    was_training = model.training
    model.train(train)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params, foreach=False) if train else None
    call = lambda: model(*args, **kwargs)  # noqa: E731
    device_type = device.split(":")[0]
    inputs = [t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)]
    cuda = device.startswith("cuda")
    try:
        # the warm-up step: the same step under a tracker of its own (the same code path),
        # which makes the optimizer's states; its gradients are dropped, as the measured
        # step's zero_grad(set_to_none=True) would, so both steps start alike
        run_step(StepTracker(), model, call, opt, train=train, precision=precision,
                 device_type=device_type)
        for p in model.parameters():
            p.grad = None
        gc.collect()
        trim_heap()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_start = torch.cuda.memory_allocated()
        tracker = StepTracker()
        tracker.track_external(model, opt, *inputs)
        start = sum(tracker.live().values())
        with touched_allocations() as touched:
            reset = reset_peak_rss()
            rss0 = rss_bytes() if reset else peak_rss_bytes()
            run_step(tracker, model, call, opt, train=train, precision=precision,
                     device_type=device_type)
            rss1 = peak_rss_bytes()
        measured: dict = {"rss_growth_bytes": max(rss1 - rss0, 0), "rss_start_bytes": rss0,
                          "rss_reset": reset, "rss_touched": touched}
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            measured.update(cuda_peak_bytes=peak, cuda_growth_bytes=peak - cuda_start)
    finally:
        model.train(was_training)
    return MemoryReport(peak_bytes=max(tracker.peak, start),
                        by_category=dict(tracker.peak_snap) or tracker.live(),
                        peak_at=tracker.peak_at, start_bytes=start, end_by_category=tracker.end,
                        saved_by_module=tracker.saved_by_module(), timeline=tracker.timeline,
                        train=train, optimizer=optimizer, precision=precision,
                        measured=measured)
