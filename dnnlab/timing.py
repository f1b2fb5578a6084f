"""Timing through torch.utils.benchmark.Timer: it adapts the number of runs to the cost of one
and reports the median, synchronizing CUDA where the statement runs there."""
from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PairedTiming:
    """Two costs timed in interleaved pairs (see `paired_ratio`)."""

    a: float  # seconds: the median over the rounds of fa's block medians
    b: float  # the same for fb
    ratio: float  # the median over the rounds of a_i / b_i, the pairs' time ratios
    low: float  # their first quartile
    high: float  # their third quartile
    rounds: int


def paired_ratio(fa: Callable[[], object], fb: Callable[[], object], *, rounds: int,
                 min_run_time: float, time_fn: Callable[..., float] = median_seconds
                 ) -> PairedTiming:
    """The time ratio of fa to fb, from `rounds` pairs of short blocks timed back to back in
    alternating order (a b, b a, a b, ...), each block a `time_fn` median (Timer's
    blocked_autorange by default): the median of the pairs' ratios a_i / b_i, with its
    quartiles. On a shared machine a burst of other work or a change of clock lasts longer than
    one pair and hits both of its blocks alike, so it largely cancels in a_i / b_i, while the
    ratio of two separately timed medians carries it whole; the alternating order cancels a
    slow drift and the cost of going first."""
    if rounds < 1:
        raise ValueError(f"paired_ratio: rounds must be >= 1, got {rounds}")
    ta, tb = [], []
    for i in range(rounds):
        if i % 2 == 0:
            ta.append(time_fn(fa, min_run_time=min_run_time))
            tb.append(time_fn(fb, min_run_time=min_run_time))
        else:
            tb.append(time_fn(fb, min_run_time=min_run_time))
            ta.append(time_fn(fa, min_run_time=min_run_time))
    r = [x / y for x, y in zip(ta, tb)]
    low, _, high = statistics.quantiles(r, n=4, method="inclusive") if rounds > 1 else r * 3
    return PairedTiming(statistics.median(ta), statistics.median(tb), statistics.median(r),
                        low, high, rounds)
