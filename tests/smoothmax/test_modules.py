"""dnnlab.smoothmax.modules: SmoothMax and SmoothMaxPool2d (fixed, per-channel and learnable
temperatures; max pooling at beta = inf, average pooling as beta -> 0 when normalized; the
pooling fast paths against the generic smooth_max), and bad betas as one clear error.

SmoothMaxPool2d as a drop-in for nn.MaxPool2d: padding (-inf), dilation, ceil_mode, the same
output shapes and errors; beta = inf with ties="first" is max_pool2d bit for bit; finite beta
against unfold + torch.logsumexp / beta in float64; gradcheck and gradgradcheck, also with
respect to beta itself (docs/math.md (1a)-(1d))."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.smoothmax.functional import smooth_max
from dnnlab.smoothmax.modules import SmoothMax, SmoothMaxPool2d
from dnnlab.smoothmax.reference import smooth_max_reference

INF = math.inf


def grad_of(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), g

# ---------------------------------------------------------------- learnable temperature


def finite_difference(f, param, h=1e-6):
    """Central differences of the scalar f() in each entry of param."""
    grad = torch.zeros_like(param)
    with torch.no_grad():
        for i in range(param.numel()):
            old = param.view(-1)[i].item()
            param.view(-1)[i] = old + h
            up = f().item()
            param.view(-1)[i] = old - h
            down = f().item()
            param.view(-1)[i] = old
            grad.view(-1)[i] = (up - down) / (2 * h)
    return grad


def test_learnable_temperature_gradient_vs_finite_differences():
    torch.manual_seed(1)
    layer = SmoothMax(2.5, dim=-1, learnable=True).double()
    assert isinstance(layer.log_beta, torch.nn.Parameter)
    assert layer.beta.item() == pytest.approx(2.5)
    x, w = torch.randn(4, 11, dtype=torch.float64), torch.randn(4, dtype=torch.float64)

    def loss():
        return (layer(x) * w).sum()

    loss().backward()
    torch.testing.assert_close(layer.log_beta.grad, finite_difference(loss, layer.log_beta.data),
                               rtol=1e-6, atol=1e-9)


def test_learnable_per_channel_pool_gradient_vs_finite_differences():
    torch.manual_seed(2)
    pool = SmoothMaxPool2d([0.5, 2.0, 8.0], kernel_size=2, learnable=True, normalized=True).double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    w = torch.randn(2, 3, 2, 3, dtype=torch.float64)

    def loss():
        return (pool(x) * w).sum()

    loss().backward()
    fd = finite_difference(loss, pool.log_beta.data)
    torch.testing.assert_close(pool.log_beta.grad, fd, rtol=1e-6, atol=1e-9)


def test_learnable_beta_is_positive_by_construction():
    layer = SmoothMax(0.5, learnable=True)
    with torch.no_grad():
        layer.log_beta.fill_(-30.0)  # any real log_beta
    assert layer.beta.item() > 0
    assert torch.isfinite(layer(torch.randn(3, 5))).all()


# ---------------------------------------------------------------- pooling


@pytest.mark.parametrize("kernel_size,stride", [(2, None), (3, 2), ((2, 3), 1), ((3, 1), (1, 2))])
def test_pool_at_inf_is_max_pool(kernel_size, stride):
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    pool = SmoothMaxPool2d("inf", kernel_size, stride)
    y, g = grad_of(pool, x)
    y_ref, g_ref = grad_of(F.max_pool2d, x, kernel_size, stride)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def test_global_pool_at_inf_is_adaptive_max_pool():
    x = torch.randn(2, 4, 7, 5)
    y, g = grad_of(SmoothMaxPool2d(float("inf")), x)
    y_ref, g_ref = grad_of(F.adaptive_max_pool2d, x, 1)
    assert y.shape == (2, 4, 1, 1)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def test_pool_large_beta_close_to_max_pool():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = SmoothMaxPool2d(1e4, 2)(x)
    gap = y - F.max_pool2d(x, 2)
    assert (gap >= 0).all() and (gap <= math.log(4) / 1e4).all()  # docs/math.md (1a)


@pytest.mark.parametrize("kernel_size,stride", [(2, None), (3, 2), (None, None)])
def test_normalized_pool_tends_to_avg_pool(kernel_size, stride):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    pool = SmoothMaxPool2d(1e-6, kernel_size, stride, normalized=True)
    y, g = grad_of(pool, x)
    if kernel_size is None:
        y_ref, g_ref = grad_of(F.adaptive_avg_pool2d, x, 1)
    else:
        y_ref, g_ref = grad_of(F.avg_pool2d, x, kernel_size, stride)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-5)
    assert not torch.allclose(SmoothMaxPool2d(1.0, kernel_size, stride, normalized=True)(x), y_ref)


def test_pool_finite_beta_matches_unfolded_reference():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    y = SmoothMaxPool2d(3.0, kernel_size=3, stride=2)(x)
    cols = F.unfold(x, 3, stride=2).view(2, 3, 9, -1)  # (B, C, k*k, L)
    y_ref = smooth_max_reference(cols, 3.0, 2).view(2, 3, 2, 3)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(SmoothMaxPool2d(3.0, 3, 2), (x.requires_grad_(),))


def test_per_channel_beta_pool():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    y = SmoothMaxPool2d(torch.tensor([1.0, 4.0, INF]))(x)
    for c, b in enumerate([1.0, 4.0, INF]):
        torch.testing.assert_close(y[:, c], SmoothMaxPool2d(b)(x[:, c : c + 1])[:, 0])


def test_extra_repr():
    assert "beta=2" in repr(SmoothMax(2.0))
    assert "learnable=True" in repr(SmoothMax(2.0, learnable=True))
    assert "kernel_size=(3, 3)" in repr(SmoothMaxPool2d(".inf", 3)) and "beta=inf" in repr(
        SmoothMaxPool2d(".inf", 3)
    )


# ---------------------------------------------------------------- bad values, memory


@pytest.mark.parametrize(
    "beta,shown", [(0, "0.0"), (-1, "-1.0"), (float("nan"), "nan"), (-1e-300, "-1e-300")]
)
def test_bad_beta_raises_config_error_naming_the_value(beta, shown):
    with pytest.raises(ConfigError, match=rf"beta must be in \(0, inf\], got {shown}"):
        smooth_max(torch.randn(3), beta)
    with pytest.raises(ValueError, match=shown):  # ConfigError is a ValueError
        SmoothMax(beta)
    with pytest.raises(ConfigError, match=shown):
        SmoothMaxPool2d(beta, 2)


def test_bad_tensor_beta_raises():
    with pytest.raises(ConfigError, match=r"got a tensor with entry -2.0"):
        smooth_max(torch.randn(3, 4), torch.tensor([[1.0], [-2.0], [3.0]]))
    with pytest.raises(ConfigError, match=r"entry 0.0"):
        SmoothMaxPool2d(torch.tensor([1.0, 0.0]))
    with pytest.raises(ConfigError, match="'hot'"):
        smooth_max(torch.randn(3), "hot")
    with pytest.raises(ShapeError, match=r"\(4,\)"):
        smooth_max(torch.randn(3, 4), torch.ones(4))  # one per entry of the reduced dim
    with pytest.raises(ConfigError, match="learnable beta must be finite"):
        SmoothMax(INF, learnable=True)



@pytest.mark.parametrize("shape,k", [((2, 3, 8, 8), 2), ((2, 3, 9, 7), 2), ((2, 3, 8, 8), None),
                                     ((2, 3, 6, 6), 3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_pool_fast_path_at_inf_equals_generic_smooth_max(shape, k, dtype):
    """SmoothMaxPool2d(inf) takes a max-pooling fast path: same values, ties shared equally."""
    torch.manual_seed(0)
    x = torch.randn(shape).relu().to(dtype)  # ReLU zeros: many ties
    x[0, 0, :2, :2] = -math.inf
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = SmoothMaxPool2d(math.inf, kernel_size=k)(xa)
    yb = (smooth_max(xb, math.inf, (-2, -1), True) if k is None else
          smooth_max(xb.unfold(2, k, k).unfold(3, k, k), math.inf, (-2, -1)))
    g = torch.randn_like(ya)
    (ga,), (gb,) = torch.autograd.grad(ya, xa, g), torch.autograd.grad(yb, xb, g)
    assert torch.equal(ya, yb) and torch.equal(ga, gb)
    assert type(ya.grad_fn).__name__ in ("_WindowMaxBackward", "_GlobalMaxBackward")



@pytest.mark.parametrize("k", [2, None])
def test_pool_beta_above_the_dtype_range_takes_the_max_kernel(k):
    """A finite beta above float32's largest value is inf there (docs/math.md (1a): nu - max <=
    log(n)/beta is below float32's resolution): the forward's one dispatch picks the max-pooling
    kernel, with max pooling's values; the same beta in float64 stays smooth."""
    x = torch.randn(2, 3, 8, 8).requires_grad_()
    y = SmoothMaxPool2d(1e39, kernel_size=k)(x)
    ref = F.max_pool2d(x, 2) if k else F.adaptive_max_pool2d(x, 1)
    assert torch.equal(y, ref)
    assert type(y.grad_fn).__name__ in ("_WindowMaxBackward", "_GlobalMaxBackward")
    y64 = SmoothMaxPool2d(1e39, kernel_size=k)(x.detach().double().requires_grad_())
    assert type(y64.grad_fn).__name__ in ("_WindowSmoothMaxBackward", "_SmoothMaxEagerBackward")
    with pytest.raises(TypeError, match="integer input"):
        SmoothMaxPool2d(2.0, kernel_size=2)(torch.ones(1, 1, 4, 4, dtype=torch.int64))


def test_pool_ties_first_is_torch_max_pooling():
    x = torch.randn(2, 3, 8, 8).relu().requires_grad_()
    refs = ((2, lambda t: F.max_pool2d(t, 2)), (None, lambda t: F.adaptive_max_pool2d(t, 1)))
    for k, ref in refs:
        y = SmoothMaxPool2d(math.inf, kernel_size=k, ties="first")(x)
        g = torch.randn_like(y)
        (ga,) = torch.autograd.grad(y, x, g)
        xr = x.detach().requires_grad_()
        (gb,) = torch.autograd.grad(ref(xr), xr, g)
        assert torch.equal(y, ref(x)) and torch.equal(ga, gb)
    with pytest.raises(ConfigError, match="ties"):
        SmoothMaxPool2d(math.inf, ties="all")


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("ties", ["shared", "first"])
@pytest.mark.parametrize("beta", [2.0, math.inf, [1.0, 3.0]], ids=["beta2", "inf", "tensor"])
@pytest.mark.parametrize("kernel, stride", [(2, None), ((4, 4), None), (None, None), (3, 1)],
                         ids=["2x2", "4x4", "global", "3x3s1"])
def test_pooling_second_derivatives_pass_gradgradcheck(kernel, stride, beta, ties, normalized):
    """Double backward through SmoothMaxPool2d in float64 (docs/math.md (1d)): the window and
    global paths, finite, infinite and per-channel beta, both tie rules; a width no window
    covers fully (5 with 2x2 windows)."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    pool = SmoothMaxPool2d(beta, kernel, stride=stride, ties=ties, normalized=normalized)
    assert torch.autograd.gradgradcheck(pool, (x,))


def test_pooling_hessian_vector_product_equals_logsumexp():
    """The issue's case: a Hessian-vector product through SmoothMaxPool2d(2.0, 2) was 0; it is
    the product through torch.logsumexp over the same windows."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    v = torch.randn_like(x)

    def ref(x):  # (B, C, 3, 3) windows of 2x2, nu_2 by torch.logsumexp
        w = x.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
        return torch.logsumexp(2.0 * w, -1) / 2.0

    _, ours = torch.autograd.functional.hvp(lambda x: SmoothMaxPool2d(2.0, 2)(x).sum(), x, v)
    _, want = torch.autograd.functional.hvp(lambda x: ref(x).sum(), x, v)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-12)


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
