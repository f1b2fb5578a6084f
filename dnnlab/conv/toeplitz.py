"""The banded Toeplitz matrix A_w of a 1-D convolution (docs/math.md (3)).

One layer of the chain is a matrix-vector product,

    y_l = sigma(A_{w_l} y_{l-1} + b_l 1),   A_w^{(i,j)} = w^{(j-i+1)} for i <= j <= i+f-1, else 0,

with A_w of size n_l x n_{l-1} and n_l = n_{l-1} - f + 1 (1-based indices). In 0-based indices
row i holds w in columns i .. i+f-1, so (A_w y)[i] = sum_k w[k] y[i+k]: a *correlation*, which
is exactly what torch's conv1d computes:

    toeplitz(w, n) @ y == F.conv1d(y[None, None], w[None, None])[0, 0]

The same construction gives C_{v^T} of docs/math.md (3a): C_{v^T} = toeplitz(v, n_{l-1}), of size
f x n_{l-1}, because (C_{v^T} y)^{(i)} = sum_j v^{(j)} y^{(i+j-1)}.
"""
from __future__ import annotations

import torch

from dnnlab.core.errors import ShapeError


def toeplitz(w: torch.Tensor, n_in: int) -> torch.Tensor:
    """A_w for a filter w of length f acting on inputs of length n_in (docs/math.md (3)).

    w may carry leading batch dimensions: w of shape (..., f) gives (..., n_in - f + 1, n_in).
    The result has w's dtype and device and is differentiable in w.
    """
    if w.dim() < 1:
        raise ShapeError(f"toeplitz: filter must have at least 1 dimension, got shape "
                         f"{tuple(w.shape)}")
    f = w.shape[-1]
    if f < 1 or f > n_in:
        raise ShapeError(f"toeplitz: filter size f={f} > input length n={n_in}" if f > n_in
                         else f"toeplitz: empty filter (f={f})")
    m = n_in - f + 1  # docs/math.md (3): n_l = n_{l-1} - f_l + 1
    rows = torch.arange(m, device=w.device)[:, None]  # (m, 1)
    cols = rows + torch.arange(f, device=w.device)[None, :]  # (m, f): columns i .. i+f-1
    A = w.new_zeros(*w.shape[:-1], m, n_in)  # (..., m, n_in)
    # docs/math.md (3): A_w^{(i,j)} = w^{(j-i+1)} for i <= j <= i+f-1 (0-based: A[i, i+k] = w[k])
    A[..., rows, cols] = w[..., None, :].expand(*w.shape[:-1], m, f)
    return A
