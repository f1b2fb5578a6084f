"""dnnlab.smoothmax.reference: the plain-autograd reference against torch.logsumexp(beta x)/beta
and torch.amax written out directly, in float64 (value and gradient)."""
import math

import pytest
import torch

from dnnlab.smoothmax.reference import smooth_max_reference

INF = math.inf


def value_and_grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), g


@pytest.mark.parametrize("beta", [1e-3, 1.0, 7.5])
@pytest.mark.parametrize("dim", [-1, 0, (0, 2)])
def test_matches_unshifted_logsumexp(beta, dim):
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    y, g = value_and_grad(smooth_max_reference, x, beta, dim)
    y_ref, g_ref = value_and_grad(lambda t: torch.logsumexp(beta * t, dim) / beta, x)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)  # softmax(beta x), (1c)


def test_inf_is_amax_with_ties_shared():
    x = torch.tensor([[1.0, 3.0, 3.0], [0.0, -1.0, 2.0]], dtype=torch.float64)
    y, g = value_and_grad(smooth_max_reference, x, INF)
    assert y.tolist() == [3.0, 2.0]
    assert g.tolist() == [[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]


def test_normalized_subtracts_log_n_over_beta():
    x = torch.randn(4, 6, dtype=torch.float64)
    got = smooth_max_reference(x, 2.0, normalized=True)
    want = torch.logsumexp(2.0 * x, -1) / 2.0 - math.log(6) / 2.0
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    got = smooth_max_reference(x, 2.0, dim=(0, 1), normalized=True)
    torch.testing.assert_close(got, torch.logsumexp(2.0 * x.flatten(), 0) / 2 - math.log(24) / 2)


def test_tensor_beta_per_row_with_inf_and_its_gradient():
    x = torch.randn(3, 5, dtype=torch.float64)
    beta = torch.tensor([[0.5], [INF], [3.0]], dtype=torch.float64, requires_grad=True)
    y = smooth_max_reference(x, beta)
    assert y.shape == (3,)
    assert y[1].item() == x[1].max().item()
    for i in (0, 2):
        b = beta[i, 0].item()
        assert y[i].item() == pytest.approx(torch.logsumexp(b * x[i], 0).item() / b, rel=1e-13)
    y.sum().backward()
    p = torch.softmax(0.5 * x[0], 0)  # d nu / d beta = (sum p x - nu) / beta, (1c)
    assert beta.grad[0, 0].item() == pytest.approx(((p * x[0]).sum() - y[0]).item() / 0.5)
    assert beta.grad[1, 0].item() == 0.0


def test_accurate_where_beta_x_is_huge():
    """Tied maxima at 1e38: the naive logsumexp(beta x)/beta absorbs log k; the shift keeps the
    weights at 1/k each (docs/math.md (1c))."""
    x = torch.tensor([1e38, 1e38, 0.0, -1e38], dtype=torch.float64)
    y, g = value_and_grad(smooth_max_reference, x, 1e-3)
    assert y.item() == pytest.approx(1e38, rel=1e-15)
    torch.testing.assert_close(g, torch.tensor([0.5, 0.5, 0, 0], dtype=torch.float64))
