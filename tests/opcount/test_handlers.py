"""dnnlab.opcount.handlers: the built-in counts of pools, norms, elementwise ops, attention and
einsum, and the checks that name a layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.core.errors import ShapeError
from dnnlab.opcount import count_ops


class Call(nn.Module):
    """A module that runs one function on its input."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def rows(fn, shape):
    return count_ops(Call(fn), shape).layers


def test_pools():
    (r,) = rows(lambda x: F.max_pool2d(x, 2), [1, 3, 8, 8])
    assert (r.family, r.macs, r.other, r.mults) == ("pool", 48 * 3, 48 * 3, 0)  # 3 comparisons
    (r,) = rows(lambda x: F.avg_pool1d(x, 4), [2, 3, 8])
    assert (r.mults, r.adds, r.macs) == (12, 12 * 3, 12 * 4)  # sum 4, divide once
    (r,) = rows(lambda x: F.adaptive_avg_pool2d(x, 1), [1, 2, 4, 4])
    assert (r.mults, r.adds) == (2, 2 * 15)


def test_norms_and_elementwise():
    (r,) = count_ops(nn.BatchNorm2d(3).eval(), [2, 3, 4, 4]).layers
    assert (r.family, r.mults, r.adds) == ("norm", 2 * 96, 2 * 96)  # affine: x2
    (r,) = count_ops(nn.LayerNorm(5, elementwise_affine=False), [2, 5]).layers
    assert (r.mults, r.macs) == (10, 20)
    (r,) = count_ops(nn.GroupNorm(2, 4), [1, 4, 3]).layers
    assert r.mults == 24
    (r,) = rows(torch.relu, [2, 3])
    assert (r.family, r.other, r.macs) == ("elementwise", 6, 6)
    assert [(r.adds, r.mults) for r in rows(lambda x: x * 2 + 1, [4])] == [(0, 4), (4, 0)]


def test_attention_and_einsum():
    q = torch.empty(2, 3, 4, 8)  # (B, H, L, E)

    def attend(x):
        return F.scaled_dot_product_attention(x, x, x)

    (r,) = rows(attend, list(q.shape))
    assert (r.family, r.macs) == ("attention", 2 * 3 * 4 * 4 * (8 + 8))
    (r,) = rows(lambda x: torch.einsum("bij,bjk->bik", x, x), [2, 3, 3])
    assert (r.family, r.macs, r.mults, r.adds) == ("matmul", 54, 54, 54 - 18)
    (r,) = rows(lambda x: torch.einsum("ij,jk->ik", [x, x]), [3, 3])  # operands as a list
    assert r.macs == 27


def test_attention_backward_counts_four_products():
    wrapped = Call(lambda x: wrapped.mha(x, x, x, need_weights=False)[0])
    wrapped.mha = nn.MultiheadAttention(8, 2, batch_first=True)  # a submodule: swapped to meta
    report = count_ops(wrapped, [1, 4, 8])
    (att,) = [r for r in report.layers if r.family == "attention"]
    assert att.bwd_macs == 1 * 2 * 4 * 4 * (2 * 4 + 2 * 4)  # B H L S (2E + 2Ev)
    assert sum(r.macs for r in report.layers if r.family == "linear") == 4 * (8 * 24 + 8 * 8)


def test_unbatched_conv_and_checks_name_the_layer():
    (r,) = count_ops(nn.Conv1d(2, 3, 3), [2, 7]).layers  # (C, L): no batch dimension
    assert r.out_shape == [3, 5] and r.macs == 3 * 5 * 2 * 3
    with pytest.raises(ShapeError, match=r"layer '<model>' \(Conv2d\): expected a 4-d input"):
        count_ops(nn.Conv2d(2, 3, 3), [1, 1, 2, 7, 7])
    with pytest.raises(ShapeError, match=r"layer '<model>' \(Linear\): input has 4 features"):
        count_ops(nn.Linear(5, 2), [3, 4])
    (r,) = count_ops(nn.ConvTranspose1d(2, 4, 3, groups=2), [2, 5]).layers
    assert r.out_shape == [4, 7] and r.macs == 2 * 5 * 2 * 3
