"""Timing through torch.utils.benchmark.Timer: it adapts the number of runs to the cost of one
and reports the median, synchronizing CUDA where the statement runs there."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch.set_num_threads(n) inside the block (None: leave as is)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def median_seconds(fn: Callable[[], object], *, min_run_time: float = 0.2,
                   threads: int | None = None, label: str = "") -> float:
    """The median time of one call of `fn`, in seconds (Timer.blocked_autorange: as many runs
    as fit in `min_run_time`, after a warm-up)."""
    # torch.utils.benchmark imports cpp_extension, which logs a warning on machines without a
    # CUDA toolkit; it says nothing about timing, and a user's stderr is for errors
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, label=label,
                            num_threads=threads or torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)
