"""dnnlab.smoothmax.functional.smooth_max: the bounds of docs/math.md (1a) (0 <= nu_beta - max <=
log(n)/beta, nu_beta non-increasing in beta), grad nu_1 = softmax(x) (1b), grad nu_beta =
softmax(beta x) -> argmax one-hot (1c); compared with dnnlab.smoothmax.reference (torch.logsumexp
through autograd) in float64, at extremes, in every dtype; smooth_max and SmoothMaxPool2d under
torch.func (hessian, vmap(grad), jvp) and forward AD, against the same computation in torch's
own ops, in float64.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, hessian, jvp, vmap

from dnnlab.smoothmax.functional import smooth_max
from dnnlab.smoothmax.modules import SmoothMaxPool2d
from dnnlab.smoothmax.reference import smooth_max_reference

INF = math.inf
EPS64 = torch.finfo(torch.float64).eps
FAST = settings(max_examples=50, deadline=None)

values = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=40
)
betas = st.floats(1e-3, 1e3)


def ref_nu(x, beta, dim=-1):
    """nu_beta through dnnlab.smoothmax.reference, in float64 (docs/math.md (1a))."""
    return smooth_max_reference(x.double(), beta, dim)


def grad_of(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), g


# ------------------------------------------------------- docs/math.md (1a): bounds, monotone


@FAST
@given(values, betas)
def test_gap_within_the_bounds_of_1a(xs, beta):
    # 0 <= nu_beta - max <= log(n)/beta  (docs/math.md (1a)); tolerance: a few ulps of the values
    x = torch.tensor(xs, dtype=torch.float64)
    nu, m, n = smooth_max(x, beta).item(), max(xs), len(xs)
    bound = math.log(n) / beta
    tol = 8 * EPS64 * (abs(m) + bound)
    assert nu >= m  # exact: nu = m + r/beta with r = log(sum exp(z)) >= log(1) = 0
    assert nu - m <= bound + tol
    assert math.isclose(nu, ref_nu(x, beta).item(), rel_tol=1e-12, abs_tol=tol + 1e-300)


@FAST
@given(values, betas)
def test_normalized_lies_between_mean_and_max(xs, beta):
    x = torch.tensor(xs, dtype=torch.float64)
    nu = smooth_max(x, beta, normalized=True).item()
    m, mean = max(xs), sum(xs) / len(xs)
    tol = 8 * EPS64 * (abs(m) + abs(mean) + math.log(len(xs)) / beta)
    assert mean - tol <= nu <= m + tol  # Jensen below, docs/math.md (1a) above


@FAST
@given(values, betas, st.floats(1.0, 1e3))
def test_nonincreasing_in_beta(xs, beta, factor):
    x = torch.tensor(xs, dtype=torch.float64)
    lo, hi = smooth_max(x, beta).item(), smooth_max(x, beta * factor).item()
    tol = 8 * EPS64 * (abs(lo) + abs(hi))
    assert hi <= lo + tol  # d nu / d beta = -H(softmax(beta x)) / beta^2 <= 0
    assert smooth_max(x, INF).item() <= hi + tol  # ... down to max at beta = inf


@FAST
@given(values)
def test_limit_is_max_and_small_beta_tends_to_mean(xs):
    x = torch.tensor(xs, dtype=torch.float64)
    assert smooth_max(x, INF).item() == max(xs)
    gap = smooth_max(x, 1e30).item() - max(xs)
    assert 0 <= gap <= math.log(len(xs)) / 1e30 + EPS64 * abs(max(xs))  # docs/math.md (1a)
    mean = sum(xs) / len(xs)
    spread = max(abs(v - mean) for v in xs)
    # (1/beta) log mean exp(beta x) = mean + beta Var/2 + O(beta^2): error <= beta spread^2;
    # rounding: about eps log(n) / beta
    got = smooth_max(x, 1e-6, normalized=True).item()
    assert abs(got - mean) <= 1e-6 * spread**2 + 1e-7


# ---------------------------------------------------------------- gradients (docs/math.md (1b), 1c)


@pytest.mark.parametrize("beta", [1.0, 0.3, 7.0])
@pytest.mark.parametrize("dim,keepdim", [(-1, False), (1, True), ((0, 2), False)])
def test_gradcheck_x(beta, dim, keepdim):
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: smooth_max(t, beta, dim, keepdim), (x,))
    assert torch.autograd.gradcheck(lambda t: smooth_max(t, beta, dim, normalized=True), (x,))


def test_gradcheck_tensor_beta():
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    beta = (torch.rand(4, 1, dtype=torch.float64) * 3 + 0.2).requires_grad_(True)  # per channel
    assert torch.autograd.gradcheck(lambda t, b: smooth_max(t, b), (x, beta))
    assert torch.autograd.gradcheck(lambda t, b: smooth_max(t, b, normalized=True), (x, beta))
    b0 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)  # one shared beta
    assert torch.autograd.gradcheck(lambda t, b: smooth_max(t, b, dim=(1, 2)), (x, b0))


def test_grad_beta_formula():
    # d nu / d beta = (sum softmax(beta x) x - nu) / beta  (from docs/math.md (1c))
    x = torch.randn(5, 9, dtype=torch.float64)
    beta = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    nu = smooth_max(x, beta)
    (g,) = torch.autograd.grad(nu.sum(), beta)
    p = torch.softmax(1.7 * x, -1)
    expected = (((p * x).sum(-1) - nu.detach()) / 1.7).sum()
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)
    assert g < 0  # nu decreases in beta


def test_tensor_beta_with_inf_entries():
    x = torch.tensor([[0.0, 2.0, 2.0, -1.0], [0.0, 2.0, 2.0, -1.0]], dtype=torch.float64)
    beta = torch.tensor([[1.5], [INF]], dtype=torch.float64, requires_grad=True)
    xg = x.clone().requires_grad_()
    nu = smooth_max(xg, beta)
    nu.sum().backward()
    assert nu[1].item() == 2.0 and nu[0].item() == pytest.approx(ref_nu(x[0], 1.5).item())
    p = torch.softmax(1.5 * x[0], -1)
    onehot = torch.tensor([0, 0.5, 0.5, 0.0])  # beta = inf: the tie shared
    torch.testing.assert_close(xg.grad, torch.stack([p, onehot]).double())
    expected = ((p * x[0]).sum() - nu[0].detach()) / 1.5  # d nu / d beta
    expected = torch.stack([expected, torch.tensor(0.0)]).view(2, 1).double()
    torch.testing.assert_close(beta.grad, expected)


@pytest.mark.parametrize("beta", [1.0, 1e-3, 0.5, 4.0, 60.0])
def test_grad_is_softmax_and_matches_the_reference(beta):
    # same computation through our code and through torch's autograd, compared (float64)
    x = torch.randn(6, 33, dtype=torch.float64) * 3
    nu, g = grad_of(smooth_max, x, beta)
    nu_ref, g_ref = grad_of(smooth_max_reference, x, beta)
    torch.testing.assert_close(nu, nu_ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, torch.softmax(beta * x, -1), rtol=1e-12, atol=1e-14)  # (1c)
    if beta == 1.0:
        torch.testing.assert_close(g, torch.softmax(x, -1), rtol=1e-12, atol=1e-14)  # (1b)


def test_grad_tensor_beta_matches_torch_autograd():
    x = torch.randn(2, 3, 7, dtype=torch.float64) * 2
    beta = torch.tensor([[0.5], [2.0], [9.0]], dtype=torch.float64)  # (C, 1)
    xa, ba = x.clone().requires_grad_(), beta.clone().requires_grad_()
    xb, bb = x.clone().requires_grad_(), beta.clone().requires_grad_()
    w = torch.randn(2, 3, dtype=torch.float64)
    (smooth_max(xa, ba) * w).sum().backward()
    (smooth_max_reference(xb, bb) * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ba.grad, bb.grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- extremes


@pytest.mark.parametrize("beta", [1e-3, 1.0, 1e30, INF])
def test_extreme_x_float32(beta):
    x = torch.tensor([[-3e38, 3e38, 1.0, -2.0], [-3e38, -3e38, 0.0, 1e-30]], dtype=torch.float32)
    nu, g = grad_of(smooth_max, x, beta)
    assert torch.isfinite(nu).all() and torch.isfinite(g).all()
    assert nu[0].item() == pytest.approx(3e38, rel=1e-6)
    torch.testing.assert_close(g[0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(g.sum(-1), torch.ones(2))
    assert nu[1].item() >= 1e-30 and nu[1].item() <= 1e-30 + math.log(4) / beta + 1e-6


def test_naive_formula_overflows_but_ours_does_not():
    x = torch.tensor([3e38, 1e38, 0.0])
    assert not torch.isfinite(torch.logsumexp(10.0 * x, -1) / 10.0)  # beta x overflows
    assert smooth_max(x, 10.0).item() == pytest.approx(3e38, rel=1e-6)
    xs = torch.tensor([1.0, 1.0 + 2**-20, 0.5])
    nu, g = grad_of(smooth_max, xs, 1e30)  # beta (x - m) = -1e24 or 0
    assert nu.item() == xs.max().item()
    torch.testing.assert_close(g, torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("beta", [1e-3, 2.0])
def test_extreme_beta_float64(beta):
    x = torch.randn(4, 100, dtype=torch.float64)
    nu, g = grad_of(smooth_max, x, beta)
    torch.testing.assert_close(nu, ref_nu(x, beta), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(g, torch.softmax(beta * x, -1), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("beta", [1e30, INF])
def test_ties_share_the_gradient(beta):
    # limit of softmax(beta x) with k tied maxima: 1/k each  (docs/math.md (1c) with ties)
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0], [5.0, -INF, 4.0, 4.0]])
    nu, g = grad_of(smooth_max, x, beta)
    expected = torch.tensor([[0, 0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3, 0], [1.0, 0, 0, 0]])
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(nu, torch.tensor([3.0, 2.0, 5.0]))


def test_ties_finite_beta_match_softmax():
    x = torch.tensor([1.0, 3.0, 3.0, 0.0], dtype=torch.float64)
    _, g = grad_of(smooth_max, x, 50.0)
    torch.testing.assert_close(g, torch.softmax(50.0 * x, -1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("beta", [0.5, 1e30, INF])
def test_minus_inf_entries_get_zero_weight(beta):
    x = torch.tensor([[0.3, -INF, 1.2, -INF, -0.7]], dtype=torch.float64)
    nu, g = grad_of(smooth_max, x, beta)
    nu_kept, g_kept = grad_of(smooth_max, x[:, [0, 2, 4]], beta)
    assert g[0, 1] == 0 and g[0, 3] == 0
    torch.testing.assert_close(nu, nu_kept)
    torch.testing.assert_close(g[:, [0, 2, 4]], g_kept)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.5, 1e30, INF, "tensor"])
@pytest.mark.parametrize("normalized", [False, True])
def test_all_minus_inf_slice(dtype, beta, normalized):
    x = torch.tensor([[-INF, -INF, -INF], [0.0, 1.0, -INF]], dtype=dtype, requires_grad=True)
    b = torch.tensor([[2.0], [INF]]) if beta == "tensor" else beta
    nu = smooth_max(x, b, normalized=normalized)
    nu.sum().backward()
    beta1 = INF if beta == "tensor" else beta  # the second row's beta
    assert nu[0].item() == -INF
    low = 1.0 - (math.log(3) / beta1 if normalized else 0.0)  # -inf entries count in n
    assert low - 1e-2 <= nu[1].item() <= 1.0 + math.log(2) / beta1 + 1e-2  # docs/math.md (1a)
    assert not torch.isnan(x.grad).any()
    assert (x.grad[0] == 0).all()
    assert x.grad[1].sum().item() == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("beta", [0.5, 1e30])
def test_nan_propagates(beta):
    x = torch.tensor([[1.0, float("nan"), 2.0], [1.0, 0.0, 2.0]], dtype=torch.float64)
    nu, g = grad_of(smooth_max, x, beta)
    assert math.isnan(nu[0].item()) and math.isfinite(nu[1].item())
    assert torch.isnan(g[0]).all() and torch.isfinite(g[1]).all()
    assert math.isnan(smooth_max(x, INF)[0].item())


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    "dtype,tol",
    # one ulp of the dtype: computed in float32 (float64) inside, rounded once at the end
    [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)],
)
@pytest.mark.parametrize("beta", [0.1, 1.0, 20.0, INF])
def test_dtypes_against_float64(dtype, tol, beta):
    torch.manual_seed(0)
    x = (torch.randn(8, 64) * 3).to(dtype)
    nu, g = grad_of(smooth_max, x, beta)
    assert nu.dtype == dtype and g.dtype == dtype
    xd = x.double()  # the same (rounded) inputs, in float64
    if beta == INF:
        nu_ref, g_ref = grad_of(torch.amax, xd, -1)
    else:
        nu_ref, g_ref = grad_of(smooth_max, xd, beta)
        torch.testing.assert_close(g_ref, torch.softmax(beta * xd, -1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(nu.double(), nu_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g.double(), g_ref, rtol=tol, atol=tol / 10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.5, 3.0, 20.0])
def test_half_dtypes_rounded_once(dtype, beta):
    # computed in float32 inside: output and gradient within half an ulp (+ float32 error)
    # of the float64 values, that is rounded once; computing in half itself is not
    torch.manual_seed(3)
    x = (torch.randn(32, 64) * 2).to(dtype)
    nu, g = grad_of(smooth_max, x, beta)
    nu_ref, g_ref = grad_of(smooth_max, x.double(), beta)
    for got, ref in [(nu, nu_ref), (g, g_ref)]:
        a = ref.abs().to(dtype)
        half_ulp = 0.5 * (torch.nextafter(a, torch.full_like(a, INF)) - a).double()
        assert ((got.double() - ref).abs() <= half_ulp + 1e-6 * ref.abs() + 1e-30).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_with_large_nu_keep_gradient_normalized(dtype):
    # nu rounded to half would mis-normalize exp(beta (x - nu)); ours does not use it
    x = (torch.randn(4, 50) + 300.0).to(dtype)
    _, g = grad_of(smooth_max, x, 30.0)
    ones = torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(g.double().sum(-1), ones, atol=2e-2, rtol=0)
    _, g_ref = grad_of(smooth_max, x.double(), 30.0)
    torch.testing.assert_close(g.double(), g_ref, rtol=2e-2, atol=2e-3)




@pytest.mark.parametrize("beta", [2.0, INF, "tensor"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_output_is_a_fresh_tensor_and_its_gradient_has_a_graph(beta, keepdim):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.full((3, 1), 2.0, dtype=torch.float64) if beta == "tensor" else beta
    y = smooth_max(x, b, keepdim=keepdim)
    assert y.shape == ((3, 1) if keepdim else (3,))
    y.mul_(2.0)  # in place on the output: no view+inplace error, gradient still right
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    expected = 2 * (torch.softmax(2.0 * x, -1) if beta != INF else F.one_hot(x.argmax(-1), 5))
    torch.testing.assert_close(g.detach(), expected.double())
    if beta == INF:  # e_argmax * g is constant in x, as torch.amax's gradient is
        assert not g.requires_grad
        return
    (h,) = torch.autograd.grad((g * g).sum(), x)  # a gradient penalty
    ref = x.detach().requires_grad_(True)
    r = 2 * torch.softmax(2.0 * ref, -1)
    (want,) = torch.autograd.grad((r * r).sum(), ref)
    torch.testing.assert_close(h, want)


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("beta", [0.5, 2.0, 7.0, INF, "tensor", "tensor_inf"])
def test_second_derivatives_pass_gradgradcheck(beta, normalized):
    """Double backward in float64 (docs/math.md (1d)): finite, infinite and tensor beta (one
    that trains, one with an infinite entry), over one dim and over two."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    args, f = (x,), (lambda x: smooth_max(x, beta, normalized=normalized))
    if beta == "tensor":
        b = torch.tensor([[0.5], [2.0], [4.0]], dtype=torch.float64, requires_grad=True)
        args, f = (x, b), (lambda x, b: smooth_max(x, b, normalized=normalized))
    elif beta == "tensor_inf":
        b = torch.tensor([[2.0], [INF], [3.0]], dtype=torch.float64)
        f = lambda x: smooth_max(x, b, normalized=normalized)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, args)
    if beta not in ("tensor", "tensor_inf"):
        assert torch.autograd.gradgradcheck(
            lambda x: smooth_max(x.view(3, 5, 1), beta, dim=(1, 2), normalized=normalized), (x,))


@pytest.mark.parametrize("beta", [0.5, 2.0, 30.0])
def test_hessian_equals_logsumexp_and_its_closed_form(beta):
    """The Hessian through our layer (double backward) against autograd through
    torch.logsumexp, and against beta (diag(p) - p p^T) with p = softmax(beta x)."""
    torch.manual_seed(1)
    x = torch.randn(7, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian
    ours = hessian(lambda v: smooth_max(v, beta), x)
    ref = hessian(lambda v: torch.logsumexp(beta * v, 0) / beta, x)
    p = torch.softmax(beta * x, 0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, beta * (torch.diag(p) - torch.outer(p, p)), rtol=0,
                               atol=1e-12)


def test_saves_no_full_size_tensor_besides_the_input():
    # the benchmark's memory claim in small: torch.logsumexp(beta * x) saves beta * x too
    x = torch.randn(16, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        smooth_max(x, 3.0).sum().backward()
    big = [t for t in saved if t.numel() == x.numel()]
    assert big and all(t.data_ptr() == x.data_ptr() for t in big)
    assert sum(t.numel() for t in saved if t.numel() < x.numel()) <= 2 * 16


@pytest.mark.parametrize("beta", [0.5, 4.0, 64.0])
def test_hessian_trace_bound_and_limits(beta):
    """docs/math.md (1d): trace beta (1 - sum mu^2), spectral norm <= beta / 2; as beta grows
    the Hessian vanishes for a unique max and grows like beta / k along k tied maxima."""
    hessian = torch.autograd.functional.hessian
    x = torch.tensor([0.3, -1.2, 0.9, 0.1], dtype=torch.float64)
    h = hessian(lambda v: smooth_max(v, beta), x)
    mu = torch.softmax(beta * x, 0)
    torch.testing.assert_close(torch.trace(h), beta * (1 - (mu * mu).sum()), rtol=1e-12,
                               atol=1e-12)
    assert torch.linalg.eigvalsh(h).max() <= beta / 2 + 1e-12
    tied = torch.tensor([0.9, -1.2, 0.9, 0.9], dtype=torch.float64)  # k = 3 tied maxima
    top = torch.linalg.eigvalsh(hessian(lambda v: smooth_max(v, beta), tied)).max()
    if beta == 64.0:
        assert h.abs().max() < 1e-10  # unique max: exp(-beta * 0.6) small
        torch.testing.assert_close(top, torch.tensor(beta / 3, dtype=torch.float64), rtol=1e-12,
                                   atol=0)


TOL = 1e-10


def _x(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dim", [0, 1])
def test_hessian_matches_logsumexp_and_closed_form(dim):
    x, beta = _x(4, 3), 2.0
    h = hessian(lambda v: smooth_max(v, beta, dim=dim).sum())(x)
    ref = hessian(lambda v: (torch.logsumexp(beta * v, dim) / beta).sum())(x)
    assert (h - ref).abs().max() < TOL
    col = x[:, 0] if dim == 0 else x[0]  # one slice: beta (diag mu - mu mu^T)
    mu = torch.softmax(beta * col, 0)
    closed = beta * (torch.diag(mu) - torch.outer(mu, mu))
    hs = hessian(lambda v: smooth_max(v, beta, dim=0))(col)
    assert (hs - closed).abs().max() < TOL


def test_hessian_tensor_beta_and_inf():
    x, b = _x(3, 5), torch.tensor([[0.5], [2.0], [3.0]], dtype=torch.float64)
    h = hessian(lambda v, bb: smooth_max(v, bb, dim=1).sum(), argnums=(0, 1))(x, b)
    ref = hessian(lambda v, bb: (torch.logsumexp(bb * v, 1, keepdim=True) / bb).sum(),
                  argnums=(0, 1))(x, b)
    for a, r in zip(torch.utils._pytree.tree_leaves(h), torch.utils._pytree.tree_leaves(ref)):
        assert (a - r).abs().max() < TOL
    hi = hessian(lambda v: smooth_max(v, math.inf, dim=1).sum())(x)  # unique max
    assert (hi - hessian(lambda v: v.amax(1).sum())(x)).abs().max() < TOL


def _pool_ref(x, beta, k, stride, padding):
    b, c = x.shape[:2]
    xp = F.pad(x, (padding,) * 4, value=-math.inf)
    cols = F.unfold(xp, k, stride=stride)  # (B, C*k*k, L)
    cols = cols.view(b, c, k * k, -1)
    ho = (x.shape[2] + 2 * padding - k) // stride + 1
    return (torch.logsumexp(beta * cols, 2) / beta).view(b, c, ho, -1)


@pytest.mark.parametrize("k,stride,padding", [(2, 2, 0), (3, 2, 1)])
def test_hessian_pool_window(k, stride, padding):
    x, beta = _x(1, 2, 4, 4), 1.5
    pool = SmoothMaxPool2d(beta, k, stride, padding=padding)
    h = hessian(lambda v: pool(v).sum())(x)
    ref = hessian(lambda v: _pool_ref(v, beta, k, stride, padding).sum())(x)
    assert (h - ref).abs().max() < TOL


def test_hessian_pool_global():
    x, beta = _x(2, 2, 3, 3), 2.5
    h = hessian(lambda v: SmoothMaxPool2d(beta)(v).sum())(x)
    ref = hessian(lambda v: (torch.logsumexp(beta * v.flatten(2), 2) / beta).sum())(x)
    assert (h - ref).abs().max() < TOL


def _per_sample(f, x):
    loop = torch.stack([torch.autograd.grad(f(r), r)[0]
                        for r in x.clone().requires_grad_(True)])
    return vmap(grad(f))(x), loop


@pytest.mark.parametrize("f", [
    lambda r: smooth_max(r, 3.0, dim=0).sum(),
    lambda r: smooth_max(r, math.inf, dim=1).sum(),
    lambda r: SmoothMaxPool2d(2.0, 2)(r).sum(),
    lambda r: SmoothMaxPool2d(math.inf, 2)(r).sum(),
    lambda r: SmoothMaxPool2d(math.inf)(r).sum(),
    lambda r: SmoothMaxPool2d(2.0, 3, 2, padding=1)(r).sum(),
], ids=["sm", "sm-inf", "pool", "pool-inf", "global-inf", "pool-pad"])
def test_vmap_grad_equals_loop(f):
    x = _x(3, 2, 4, 4)
    v, loop = _per_sample(f, x)
    assert (v - loop).abs().max() < TOL


@pytest.mark.parametrize("beta", [0.7, math.inf])
def test_jvp_matches_reference(beta):
    x, t = _x(4, 6), _x(4, 6, seed=1)
    _, out = jvp(lambda v: smooth_max(v, beta, dim=1), (x,), (t,))
    ref = (lambda v: torch.logsumexp(beta * v, 1) / beta) if beta != math.inf else \
        (lambda v: v.amax(1))
    _, r = jvp(ref, (x,), (t,))
    assert (out - r).abs().max() < TOL
    bt = torch.tensor([[1.3]], dtype=torch.float64)
    _, out = jvp(lambda v, b: smooth_max(v, b, dim=1, keepdim=True), (x, bt),
                 (t, torch.ones_like(bt)))
    _, r = jvp(lambda v, b: torch.logsumexp(b * v, 1, keepdim=True) / b, (x, bt),
               (t, torch.ones_like(bt)))
    assert (out - r).abs().max() < TOL


@pytest.mark.parametrize("pool", [SmoothMaxPool2d(2.0, 2), SmoothMaxPool2d(math.inf, 2),
                                  SmoothMaxPool2d(math.inf), SmoothMaxPool2d(2.0)],
                         ids=["window", "window-inf", "global-inf", "global"])
def test_forward_ad_pool_fast_paths(pool):
    """torch.autograd.forward_ad's dual tensors are not functorch-wrapped: the fast paths'
    own jvp runs; gradcheck's forward-AD check compares it with finite differences."""
    x = _x(2, 2, 4, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(pool, (x,), check_forward_ad=True)
    import torch.autograd.forward_ad as fwad
    t = _x(2, 2, 4, 5, seed=3)
    with fwad.dual_level():
        out = fwad.unpack_dual(pool(fwad.make_dual(x.detach(), t))).tangent
    _, ref = jvp(pool, (x.detach(),), (t,))  # the generic path (functorch-wrapped)
    assert (out - ref).abs().max() < TOL


def test_gradcheck_forward_ad_smooth_max():
    x = _x(3, 4).requires_grad_(True)
    b = torch.tensor([[0.5], [2.0], [math.inf]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: smooth_max(v, b, dim=1), (x,),
                                    check_forward_ad=True)
    bb = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, c: smooth_max(v, c, dim=0, normalized=True),
                                    (x, bb), check_forward_ad=True)
