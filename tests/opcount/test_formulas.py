"""dnnlab.opcount.formulas: the closed forms of docs/math.md (2) against torch in float64 (output
sizes from torch's own layers, product counts by convolving and multiplying all-ones tensors)."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from dnnlab.opcount import formulas as fm


def test_output_sizes_equal_torch():
    for n, k, s, p, d in itertools.product((5, 8, 13), (1, 2, 3), (1, 2, 3), (0, 1, 2), (1, 2)):
        if fm.conv_out_size(n, k, s, p, d) < 1:
            continue
        x, w = torch.zeros(1, 1, n, dtype=torch.float64), torch.zeros(1, 1, k, dtype=torch.float64)
        assert F.conv1d(x, w, stride=s, padding=p, dilation=d).shape[-1] == fm.conv_out_size(
            n, k, s, p, d)
        for op in range(min(s, d)):  # output_padding < stride or dilation
            if p > d * (k - 1):
                continue
            y = F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op, dilation=d)
            assert y.shape[-1] == fm.conv_transpose_out_size(n, k, s, p, d, op)


def test_conv_counts_equal_the_products_torch_sums():
    x = torch.ones(2, 6, 9, 9, dtype=torch.float64)
    for groups in (1, 2, 3):
        w = torch.ones(4 * groups, 6 // groups, 3, 3, dtype=torch.float64)
        y = F.conv2d(x, w, groups=groups)  # each output sums its C_in/groups k^2 products
        mults, adds, macs = fm.conv_counts(list(y.shape), 6, [3, 3], groups, bias=True)
        assert mults == macs == int(y.sum()) and adds == mults  # adds = mults with the bias
        _, adds, _ = fm.conv_counts(list(y.shape), 6, [3, 3], groups, bias=False)
        assert adds == mults - y.numel()  # C_in k^2 - 1 adds per output


def test_conv_transpose_counts_equal_the_products_torch_scatters():
    x = torch.ones(1, 4, 5, 5, dtype=torch.float64)
    w = torch.ones(4, 3, 3, 3, dtype=torch.float64)  # (C_in, C_out/groups, k, k)
    y = F.conv_transpose2d(x, w, stride=2)
    mults, adds, macs = fm.conv_transpose_counts(list(x.shape), 3, [3, 3], 1, list(y.shape),
                                                 bias=False)
    assert mults == macs == int(y.sum()) and adds == mults - y.numel()


def test_linear_matmul_attention_counts():
    x, w = torch.ones(3, 5, 7, dtype=torch.float64), torch.ones(11, 7, dtype=torch.float64)
    y = F.linear(x, w)
    assert fm.linear_counts([3, 5, 7], 11, bias=True) == (int(y.sum()), int(y.sum()),
                                                           int(y.sum()))
    assert fm.linear_counts([3, 5, 7], 11, bias=False)[1] == int(y.sum()) - y.numel()
    a, b = torch.ones(2, 4, 6, dtype=torch.float64), torch.ones(2, 6, 3, dtype=torch.float64)
    assert fm.matmul_counts(a.shape, b.shape, (a @ b).shape) == (2 * 4 * 3 * 6,
                                                                 2 * 4 * 3 * 5, 2 * 4 * 3 * 6)
    assert fm.matmul_counts([6], [6], [])[0] == 6  # a dot product
    q, k, v = torch.ones(2, 4, 8), torch.ones(2, 5, 8), torch.ones(2, 5, 3)
    attn = q @ k.transpose(-1, -2)  # (2, 4, 5): L S E products
    macs = fm.attention_counts(q.shape, k.shape, v.shape)[2]
    assert macs == int(attn.sum()) + int((torch.ones_like(attn) @ v).sum())
