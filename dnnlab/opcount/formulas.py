"""Closed-form operation counts of convolution and linear layers (docs/math.md (2)).

docs/math.md (2): a convolution output is one dot product of a C_in/groups x k^2 patch with the
filter: C_in k^2 multiplications and, counting the bias add, C_in k^2 additions (C_in k^2 - 1
to sum the products, +1 for the bias). There are C_out H_out W_out outputs per image. A linear
layer is the special case k = 1, H_out = W_out = 1: in_features x out_features.

MACs (multiply-accumulates, fvcore's unit) equal the multiplications.
Additions: `mults - outputs` without the bias add, `mults` with it (the convention of (2)).
"""
from __future__ import annotations

from collections.abc import Sequence
from math import floor, prod


def conv_out_size(n_in: int, k: int, stride: int, pad: int, dilation: int) -> int:
    """Output length of a convolution along one axis: floor((n + 2p - d(k-1) - 1)/s) + 1."""
    return floor((n_in + 2 * pad - dilation * (k - 1) - 1) / stride) + 1


def conv_transpose_out_size(n_in: int, k: int, stride: int, pad: int, dilation: int,
                            output_padding: int) -> int:
    """Output length of a transposed convolution: (n-1)s - 2p + d(k-1) + output_padding + 1."""
    return (n_in - 1) * stride - 2 * pad + dilation * (k - 1) + output_padding + 1


def conv_counts(out_shape: Sequence[int], c_in: int, kernel: Sequence[int], groups: int,
                bias: bool) -> tuple[int, int, int]:
    """(mults, adds, macs) of a convolution with output shape (N, C_out, *spatial).

    docs/math.md (2): C_in k^2 mults per output (C_in/groups with groups), times
    N C_out H_out W_out outputs.
    """
    outputs = prod(out_shape)  # N * C_out * H_out * W_out
    per_output = (c_in // groups) * prod(kernel)  # C_in k^2
    mults = outputs * per_output
    adds = mults if bias else mults - outputs  # sum of products (+1 bias add per output)
    return mults, adds, mults


def conv_transpose_counts(in_shape: Sequence[int], c_out: int, kernel: Sequence[int],
                          groups: int, out_shape: Sequence[int], bias: bool
                          ) -> tuple[int, int, int]:
    """(mults, adds, macs) of a transposed convolution (input shape (N, C_in, *spatial)).

    Every input element is multiplied by a C_out/groups x k^d slice of the filter (the adjoint of
    docs/math.md (2)); these products are scattered into the output and summed there.
    """
    mults = prod(in_shape) * (c_out // groups) * prod(kernel)
    outputs = prod(out_shape)
    adds = mults - outputs + (outputs if bias else 0)  # approximate: each output sums its products
    return mults, max(adds, 0), mults


def linear_counts(in_shape: Sequence[int], out_features: int, bias: bool) -> tuple[int, int, int]:
    """(mults, adds, macs) of y = x W^T + b on x of shape (..., in_features).

    docs/math.md (2): linear = conv with k = 1, H_out = W_out = 1: in x out per row of x.
    """
    rows = prod(in_shape[:-1])
    mults = rows * in_shape[-1] * out_features
    outputs = rows * out_features
    adds = mults if bias else mults - outputs
    return mults, adds, mults


def matmul_counts(a_shape: Sequence[int], b_shape: Sequence[int], out_shape: Sequence[int]
                  ) -> tuple[int, int, int]:
    """(mults, adds, macs) of a (batched) matrix product: each output sums K products."""
    if len(a_shape) == 1:
        k = a_shape[0]
    else:
        k = a_shape[-1]
    outputs = prod(out_shape) if len(out_shape) else 1
    mults = outputs * k
    return mults, mults - outputs, mults


def attention_counts(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]
                     ) -> tuple[int, int, int]:
    """(mults, adds, macs) of softmax(q k^T / sqrt(d)) v: two batched products.

    q (..., L, E), k (..., S, E), v (..., S, Ev): q k^T costs L S E, (attn) v costs L S Ev.
    """
    *batch_q, L, E = q_shape
    *_, S, Ev = v_shape
    b = prod(batch_q)
    macs = b * L * S * (E + Ev)
    outputs = b * L * S + b * L * Ev
    return macs, macs - outputs, macs
