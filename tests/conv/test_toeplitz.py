"""docs/math.md (3): the banded Toeplitz matrix A_w is conv1d's correlation."""
import pytest
import torch
import torch.nn.functional as F

from dnnlab.conv.toeplitz import toeplitz
from dnnlab.core.errors import ShapeError

f64 = torch.float64


def maxdiff(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


def test_toeplitz_band_and_entries():
    w = torch.tensor([1.0, 2.0, 3.0], dtype=f64)
    A = toeplitz(w, 6)
    assert A.shape == (4, 6) and A.dtype == f64
    for i in range(4):
        for j in range(6):
            # docs/math.md (3): A^{(i,j)} = w^{(j-i+1)} for i <= j <= i+f-1 (1-based), else 0
            expect = w[j - i].item() if i <= j <= i + 2 else 0.0
            assert A[i, j].item() == expect
    assert torch.equal(toeplitz(w, 3), w[None])  # n_in = f: one row, the filter itself


@pytest.mark.parametrize("f,n", [(1, 5), (3, 10), (7, 7), (5, 33)])
def test_toeplitz_is_conv1d(f, n):
    g = torch.Generator().manual_seed(f * 100 + n)
    w, y = torch.randn(f, generator=g, dtype=f64), torch.randn(n, generator=g, dtype=f64)
    ref = F.conv1d(y[None, None], w[None, None])[0, 0]
    assert maxdiff(toeplitz(w, n) @ y, ref) < 1e-12
    W = torch.randn(4, f, generator=g, dtype=f64)  # batched filters: (4, n - f + 1, n)
    assert toeplitz(W, n).shape == (4, n - f + 1, n)
    assert maxdiff(toeplitz(W, n)[2], toeplitz(W[2], n)) == 0


def test_toeplitz_too_long():
    with pytest.raises(ShapeError, match="f=6 > input length n=5"):
        toeplitz(torch.ones(6), 5)




def test_toeplitz_empty_and_scalar():
    with pytest.raises(ShapeError, match="at least 1 dimension"):
        toeplitz(torch.tensor(1.0), 3)
    with pytest.raises(ShapeError, match="empty filter"):
        toeplitz(torch.ones(0), 3)
