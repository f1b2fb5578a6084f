"""smooth_max and SmoothMaxPool2d under torch.func (hessian, vmap(grad), jvp) and forward AD,
against the same computation in torch's own ops, in float64."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jvp, vmap

from dnnlab.functional import smooth_max
from dnnlab.smoothmax.modules import SmoothMaxPool2d

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
