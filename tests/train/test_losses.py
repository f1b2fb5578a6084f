"""dnnlab.train.losses: the steps' losses wait on the device and are read together, in step
order, each the mean over its step's samples as a float read at once would be."""
from __future__ import annotations

import math

import torch

from dnnlab.train import losses
from dnnlab.train.losses import Pending


def test_take_reads_every_waiting_step_in_order_then_none():
    p = Pending()
    g = torch.Generator().manual_seed(0)
    sums = [torch.rand((), generator=g, dtype=torch.float64) * 100 for _ in range(5)]
    for i, s in enumerate(sums):
        p.add(i + 1, i // 2, 0.1 * (i + 1), s, 32 + i)
    got = p.take()
    assert [(s, e, lr) for s, e, lr, _ in got] == [(i + 1, i // 2, 0.1 * (i + 1))
                                                   for i in range(5)]
    assert [v for *_, v in got] == [float(s) / (32 + i) for i, s in enumerate(sums)]  # bit for bit
    assert p.take() == [] and not p.due()


def test_a_non_finite_sum_is_read_as_it_is():
    p = Pending()
    p.add(1, 0, 0.1, torch.tensor(math.nan, dtype=torch.float64), 4)
    p.add(2, 0, 0.1, torch.tensor(math.inf, dtype=torch.float64), 4)
    (_, _, _, a), (_, _, _, b) = p.take()
    assert math.isnan(a) and b == math.inf


def test_due_after_flush_seconds(monkeypatch):
    p = Pending()
    p.add(1, 0, 0.1, torch.zeros((), dtype=torch.float64), 1)
    assert not p.due()
    monkeypatch.setattr(losses, "FLUSH_S", 0.0)
    assert p.due()
