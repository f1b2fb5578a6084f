"""Bytes moved per op (docs/opcount.md "Bytes"): the closed forms for linear and conv in
float32 and float16/bfloat16, backward bytes, total_bytes and intensity."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dnnlab.opcount import count_ops


@pytest.mark.parametrize("dtype,s", [(torch.float32, 4), (torch.float16, 2),
                                     (torch.bfloat16, 2)])
def test_linear_reads_mk_plus_kn_and_writes_mn(dtype, s):
    M, K, N = 8, 32, 16
    report = count_ops(nn.Linear(K, N, bias=False), [M, K], dtype=dtype)
    (row,) = report.layers
    assert (row.read_bytes, row.write_bytes) == (s * (M * K + K * N), s * M * N)
    assert row.intensity == 2 * M * N * K / (s * (M * K + K * N + M * N))
    biased = count_ops(nn.Linear(K, N), [M, K], dtype=dtype).layers[0]
    assert biased.read_bytes == s * (M * K + K * N + N)
    # backward (weight gradient only: the input does not require grad): reads dY, X, W, b;
    # writes dW, db
    assert biased.bwd_bytes == s * (M * N + M * K + K * N + N + K * N + N)
    assert report.total_bytes() == row.read_bytes + row.write_bytes


@pytest.mark.parametrize("dtype,s", [(torch.float32, 4), (torch.float16, 2)])
def test_conv_reads_input_weight_bias_and_writes_output(dtype, s):
    B, C, H, W, O, k = 2, 3, 16, 16, 8, 3
    model = nn.Sequential(nn.Conv2d(C, O, k, padding=1), nn.ReLU())
    report = count_ops(model, [B, C, H, W], dtype=dtype)
    conv, relu = report.layers
    assert conv.read_bytes == s * (B * C * H * W + O * C * k * k + O)
    assert conv.write_bytes == s * B * O * H * W
    assert (relu.read_bytes, relu.write_bytes) == (s * B * O * H * W, s * B * O * H * W)
    assert report.total_bytes() == conv.read_bytes + conv.write_bytes + 2 * s * B * O * H * W


def test_bf16_model_counts_in_bf16():
    model = nn.Linear(32, 16, bias=False).to(torch.bfloat16)
    row = count_ops(model, [8, 32]).layers[0]  # the input is made in the model's dtype
    assert row.read_bytes == 2 * (8 * 32 + 32 * 16) and model.weight.dtype == torch.bfloat16
