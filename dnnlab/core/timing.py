"""Timing through torch.utils.benchmark.Timer: it adapts the number of runs to the cost of one
and reports the median, synchronizing CUDA where the statement runs there. `paired_ratio`
compares two costs in interleaved pairs of short blocks, which a shared machine's noise
disturbs far less than two separate medians (docs/train.md, "How a ratio is timed")."""
from __future__ import annotations

import contextlib
import logging
import math
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


def quiet_benchmark():
    """torch.utils.benchmark, imported without its import's warning: it imports cpp_extension,
    which logs "No CUDA runtime is found" on machines without a CUDA toolkit; that says nothing
    about timing, and a user's stderr is for errors."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    return benchmark


def _timer(fn: Callable[[], object], threads: int | None, label: str = ""):
    """A torch.utils.benchmark.Timer of `fn()` with `threads` (None: torch's current number)."""
    benchmark = quiet_benchmark()
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}, label=label,
                           num_threads=threads or torch.get_num_threads())


def median_seconds(fn: Callable[[], object], *, min_run_time: float = 0.2,
                   threads: int | None = None, label: str = "") -> float:
    """The median time of one call of `fn`, in seconds (Timer.blocked_autorange: as many runs
    as fit in `min_run_time`, after a warm-up)."""
    return float(_timer(fn, threads, label).blocked_autorange(min_run_time=min_run_time).median)


def call_seconds(fn: Callable[[], object], number: int, *, threads: int | None = None) -> float:
    """Seconds per call of `fn`: the mean of `number` back-to-back calls, one Timer.timeit block
    (no warm-up of its own)."""
    return float(_timer(fn, threads).timeit(number).mean)


@dataclass(frozen=True)
class PairedTiming:
    """Two costs timed in interleaved pairs (see `paired_ratio`)."""

    a: float  # seconds per call of fa: the median over the rounds of its blocks
    b: float  # the same for fb
    ratio: float  # the median over the rounds of a_i / b_i, the pairs' time ratios
    low: float  # their first quartile
    high: float  # their third quartile
    rounds: int
    calls: tuple[int, int]  # calls of fa and of fb in each of their blocks


def paired_ratio(fa: Callable[[], object], fb: Callable[[], object], *, rounds: int,
                 min_run_time: float, min_calls: int = 1, calls: tuple[int, int] | None = None,
                 time_fn: Callable[[Callable[[], object], int], float] = call_seconds
                 ) -> PairedTiming:
    """The time ratio of fa to fb, from `rounds` pairs of short blocks timed back to back in
    alternating order (a b, b a, a b, ...): the median of the pairs' ratios a_i / b_i, with its
    quartiles. Each block is `time_fn(fn, n)`, seconds per call over n back-to-back calls
    (`call_seconds`: a Timer.timeit block); n is `calls` or, after a warm-up call, the number
    of calls that fill `min_run_time`, at least `min_calls`, for each side.

    On a shared machine a burst of other work or a change of clock lasts longer than one pair
    and hits both of its blocks alike, so it largely cancels in a_i / b_i, while the ratio of
    two separately timed medians carries it whole; the alternating order cancels a slow drift
    and the cost of going first."""
    if rounds < 1:
        raise ValueError(f"paired_ratio: rounds must be >= 1, got {rounds}")
    if calls is None:
        calls = tuple(_calls(f, min_run_time, min_calls, time_fn) for f in (fa, fb))
    (na, nb), ta, tb = calls, [], []
    for i in range(rounds):
        if i % 2 == 0:
            ta.append(time_fn(fa, na))
            tb.append(time_fn(fb, nb))
        else:
            tb.append(time_fn(fb, nb))
            ta.append(time_fn(fa, na))
    r = [x / y for x, y in zip(ta, tb)]
    low, _, high = statistics.quantiles(r, n=4, method="inclusive") if rounds > 1 else r * 3
    return PairedTiming(statistics.median(ta), statistics.median(tb), statistics.median(r),
                        low, high, rounds, (na, nb))


def _calls(fn, min_run_time: float, min_calls: int, time_fn) -> int:
    """Calls per block: enough to fill min_run_time by one timed call after a warm-up one."""
    time_fn(fn, 1)
    one = time_fn(fn, 1)
    return max(min_calls, math.ceil(min_run_time / one) if one > 0 else min_calls)
