"""SmoothMaxPool2d as a drop-in for nn.MaxPool2d: padding (-inf), dilation, ceil_mode, the
same output shapes and errors; beta = inf with ties="first" is max_pool2d bit for bit; finite
beta against unfold + torch.logsumexp / beta in float64; gradcheck and gradgradcheck, also
with respect to beta itself (docs/math.md (1a)-(1d))."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.nn import SmoothMaxPool2d
from dnnlab.smoothmax.functional import smooth_max

ARGS = [  # kernel, stride, padding, dilation, ceil_mode
    (3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 2, 0, 1, True), (3, 1, 1, 2, False),
    ((3, 2), (2, 1), (1, 0), (1, 2), True), (2, 3, 1, 1, True),
]
IDS = ["k3s2p1", "k3s2p1ceil", "k2ceil", "k3s1p1d2", "rect", "k2s3p1ceil"]


def reference(x, beta, kernel, stride, padding, dilation, ceil_mode):
    """nu_beta of MaxPool2d's windows by torch ops: F.unfold of the input padded with -inf,
    torch.logsumexp(beta w) / beta (docs/math.md (1a)); shapes from max_pool2d itself."""
    ho, wo = F.max_pool2d(x.detach(), kernel, stride, padding, dilation, ceil_mode).shape[2:]
    k, s, p, d = (nn.modules.utils._pair(v) for v in (kernel, stride, padding, dilation))
    extra = [max(0, (o - 1) * st + dd * (kk - 1) + 1 - (n + 2 * pp))  # ceil_mode's last window
             for o, st, dd, kk, n, pp in zip((ho, wo), s, d, k, x.shape[2:], p)]
    xp = F.pad(x, (p[1], p[1] + extra[1], p[0], p[0] + extra[0]), value=-math.inf)
    cols = F.unfold(xp, k, dilation=d, stride=s)  # (B, C*kh*kw, L)
    cols = cols.view(x.shape[0], x.shape[1], k[0] * k[1], -1)[..., :]  # (B, C, kh*kw, L)
    ncols = (xp.shape[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    cols = cols.view(*cols.shape[:3], -1, ncols)[..., :ho, :wo]  # (B, C, kh*kw, Ho, Wo)
    return torch.logsumexp(beta * cols, 2) / beta  # (B, C, Ho, Wo)


@pytest.mark.parametrize("args", ARGS, ids=IDS)
def test_ties_first_at_inf_is_max_pool2d_bit_for_bit(args):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8).relu().requires_grad_()  # ReLU zeros: ties
    ours = SmoothMaxPool2d(math.inf, args[0], args[1], ties="first", padding=args[2],
                           dilation=args[3], ceil_mode=args[4])
    torch_pool = nn.MaxPool2d(*args[:4], ceil_mode=args[4])
    y, y_ref = ours(x), torch_pool(x)
    g = torch.randn_like(y_ref)
    (gx,), (gx_ref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(y_ref, x, g)
    assert y.shape == y_ref.shape and torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    assert torch.equal(ours(x[0]), torch_pool(x[0]))  # unbatched (C, H, W)


@pytest.mark.parametrize("beta", [0.7, 3.0, math.inf], ids=["b0.7", "b3", "inf"])
@pytest.mark.parametrize("args", ARGS, ids=IDS)
def test_finite_beta_windows_equal_unfold_logsumexp(args, beta):
    """Values and gradients of every window (padded entries weigh 0) against the reference;
    at inf with shared ties the values are max_pool2d's."""
    torch.manual_seed(1)
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    pool = SmoothMaxPool2d(beta, args[0], args[1], padding=args[2], dilation=args[3],
                           ceil_mode=args[4])
    y = pool(x)
    if math.isinf(beta):
        assert torch.equal(y, F.max_pool2d(x, *args[:4], ceil_mode=args[4]))
        return
    y_ref = reference(x, beta, *args)
    g = torch.randn_like(y_ref)
    (gx,), (gx_ref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-12)


BAD = [dict(kernel_size=2, padding=2), dict(kernel_size=2, stride=0),
       dict(kernel_size=2, stride=-1), dict(kernel_size=7), dict(kernel_size=3, dilation=3),
       dict(kernel_size=2, dilation=0), dict(kernel_size=-1), dict(kernel_size=2, padding=-1),
       dict(kernel_size=3, stride=3, padding=1, ceil_mode=True)]


@pytest.mark.parametrize("beta", [2.0, math.inf])
@pytest.mark.parametrize("kw", BAD, ids=[str(b) for b in BAD])
def test_bad_arguments_raise_what_max_pool2d_raises(kw, beta):
    x = torch.randn(1, 2, 5, 5)
    try:
        out = nn.MaxPool2d(**kw)(x)
    except RuntimeError as e:
        want = e
    else:  # a combination MaxPool2d takes: so do we, with its shape
        assert SmoothMaxPool2d(beta, **kw)(x).shape == out.shape
        return
    with pytest.raises(type(want), match=re.escape(str(want).splitlines()[0])):
        kw = dict(kw)
        SmoothMaxPool2d(beta, kw.pop("kernel_size"), kw.pop("stride", None), **kw)(x)


CASES = [  # (kernel, stride, padding), shape (B, C, H, W): window with/without padding, global
    ((2, None, 0), (1, 1, 4, 5)), ((3, 2, 1), (1, 2, 5, 5)), ((3, 1, 1), (1, 1, 4, 4)),
    ((None, None, 0), (1, 2, 3, 4)),
]


@pytest.mark.parametrize("beta", [2.0, math.inf], ids=["b2", "inf"])
@pytest.mark.parametrize("ties", ["shared", "first"])
@pytest.mark.parametrize("case", CASES, ids=["2x2", "3x3s2p1", "3x3s1p1", "global"])
def test_gradcheck_and_gradgradcheck_with_padding_and_relu_ties(case, ties, beta):
    """Finite beta on ReLU outputs (many tied zeros, a smooth point of nu_beta); at beta = inf
    distinct values, since max is not differentiable where maxima tie."""
    (k, s, p), shape = case
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=torch.float64)
    x = (x.relu() if not math.isinf(beta) else 3 * x).requires_grad_()
    assert not math.isinf(beta) or len(x.unique()) == x.numel()
    pool = SmoothMaxPool2d(beta, k, s, ties=ties, padding=p)
    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))


@pytest.mark.parametrize("case", CASES, ids=["2x2", "3x3s2p1", "3x3s1p1", "global"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_beta_learnable_gradcheck_and_gradgradcheck_in_beta(case, per_channel):
    """d nu / d beta and its second derivatives through the pooling, with beta a float64
    tensor that requires grad (one per channel or one for all)."""
    (k, s, p), shape = case
    torch.manual_seed(3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    c = shape[1]
    beta = (torch.rand(c if per_channel else (), dtype=torch.float64) + 0.5).requires_grad_()

    def f(x, beta):
        pool = SmoothMaxPool2d(1.0, k, s, padding=p)
        pool._beta_float = None
        pool.register_buffer("beta_buf", beta)  # the caller's tensor, graph and all
        return pool(x)

    assert torch.autograd.gradcheck(f, (x, beta))
    assert torch.autograd.gradgradcheck(f, (x, beta))


def test_learnable_module_beta_is_a_float64_parameter_with_its_gradient():
    pool = SmoothMaxPool2d(torch.tensor([1.5, 2.5], dtype=torch.float64), 2, learnable=True)
    assert pool.log_beta.dtype is torch.float64
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad(pool(x).sum(), pool.log_beta)
    assert g.shape == (2,) and bool((g != 0).all())


@pytest.mark.parametrize("beta", [1.5, torch.tensor(1.5, dtype=torch.float64)],
                         ids=["float", "tensor"])
def test_smooth_max_gradcheck_and_gradgradcheck_in_beta(beta):
    torch.manual_seed(4)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.as_tensor(beta, dtype=torch.float64).reshape(1, 1).repeat(3, 1).requires_grad_()
    for dim, bb in ((-1, b), ((0, 1), b[:1])):
        def f(x, b, dim=dim):
            return smooth_max(x, b, dim, keepdim=True)
        assert torch.autograd.gradcheck(f, (x, bb.detach().requires_grad_()))
        assert torch.autograd.gradgradcheck(f, (x, bb.detach().requires_grad_()))
