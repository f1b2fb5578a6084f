"""dnnlab.core.timing: median seconds, thread scopes and paired ratios (interleaved, median of the
pairs)."""
from __future__ import annotations

import math

import pytest
import torch

from dnnlab.core import timing


def test_median_seconds_measures_a_sleep_like_cost():
    x = torch.randn(256, 256)
    t = timing.median_seconds(lambda: x @ x, min_run_time=0.05, threads=1)
    assert 0 < t and math.isfinite(t)  # a time, never bounded in a test (benchmarks/ do)
    before = torch.get_num_threads()
    with timing.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_paired_ratio_alternates_and_takes_the_median_of_the_pairs():
    calls, costs = [], {"a": iter([2.0, 6.0, 3.0, 9.0, 4.0]), "b": iter([1.0, 2.0, 1.0, 3.0, 2.0])}

    def time_fn(fn, number):
        calls.append((fn(), number))
        return next(costs[calls[-1][0]])

    p = timing.paired_ratio(lambda: "a", lambda: "b", rounds=5, min_run_time=0.01,
                            calls=(3, 2), time_fn=time_fn)
    assert [c for c, _ in calls] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert {c: n for c, n in calls} == {"a": 3, "b": 2}
    # pair ratios 2, 3, 3, 3, 2: median 3; quartiles 2 and 3; medians of each side 4 and 2
    assert (p.ratio, p.low, p.high, p.a, p.b, p.rounds) == (3.0, 2.0, 3.0, 4.0, 2.0, 5)


def test_paired_ratio_fills_each_block_from_a_warm_call():
    seen = []

    def time_fn(fn, number):  # a call of "a" costs 0.004 s, of "b" 0.1 s
        seen.append((fn(), number))
        return {"a": 0.004, "b": 0.1}[seen[-1][0]]

    p = timing.paired_ratio(lambda: "a", lambda: "b", rounds=1, min_run_time=0.01, min_calls=2,
                            time_fn=time_fn)
    assert seen[:4] == [("a", 1), ("a", 1), ("b", 1), ("b", 1)]  # warm-up, then one timed call
    assert p.calls == (3, 2)  # ceil(0.01 / 0.004) = 3; b: one call fills it, but at least 2
    assert p.ratio == p.low == p.high == 0.04


def test_paired_ratio_times_real_work():
    x = torch.randn(128, 128)
    with timing.torch_threads(1):
        p = timing.paired_ratio(lambda: x @ x, lambda: x @ x, rounds=3, min_run_time=0.01)
    assert p.rounds == 3 and p.a > 0 and p.b > 0 and p.low <= p.ratio <= p.high
    assert min(p.calls) >= 1
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        timing.paired_ratio(lambda: 0, lambda: 0, rounds=0, min_run_time=0.01)
