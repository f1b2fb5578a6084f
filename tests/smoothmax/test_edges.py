"""Issue 29's fourteen edge cases, each against a plain-torch float64 reference
(tests/smoothmax/references.py: per-window torch.logsumexp over the valid entries,
nn.MaxPool2d, autograd through torch.logsumexp, mpmath for d nu / d beta)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.nn import SmoothAdaptiveMaxPool2d, SmoothMaxPool2d, swap_pools
from dnnlab.smoothmax.functional import smooth_max
from tests.smoothmax.references import dnu_dbeta_mp, pool_reference

INF = math.inf


# 1. normalized: n counts a window's valid entries only
@pytest.mark.parametrize("beta", [1e-3, 8.0])
def test_1_normalized_counts_valid_entries(beta):
    ones = torch.ones(1, 1, 7, 7, dtype=torch.float64)
    y = SmoothMaxPool2d(beta, 3, 2, 1, normalized=True)(ones)
    assert torch.allclose(y, torch.ones_like(y), rtol=0, atol=1e-12)  # was -809.9 / 0.899
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    for args in [(3, 2, 1, 1, False), (2, 2, 0, 1, True), ((2, 3), (2, 1), (1, 1), (2, 1), True)]:
        k, s, p, d, c = [(a, a) if isinstance(a, int) and not isinstance(a, bool) else a
                         for a in args[:4]] + [args[4]]
        ours = SmoothMaxPool2d(beta, k, s, p, d, ceil_mode=c, normalized=True)(x)
        ref = pool_reference(x, beta, k, s, p, d, c, normalized=True)
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(ref)
        assert torch.allclose(torch.autograd.grad(ours, x, g)[0],
                              torch.autograd.grad(ref, x, g)[0], rtol=1e-9, atol=1e-12)
        # [mean, max] of the valid entries
        lo = -pool_reference(-x, INF, k, s, p, d, c)
        assert (ours >= lo - 1e-9).all()


# 2. a finite beta above the dtype's max is max pooling on every path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("beta", [1e39, 1e300])
def test_2_huge_beta_is_max(dtype, beta):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8).to(dtype)
    want = F.max_pool2d(x.double(), 2)
    for pool in (SmoothMaxPool2d(beta, 2), SmoothMaxPool2d(beta, 2, normalized=True),
                 SmoothMaxPool2d(beta, 3, 1, 1)):
        y = pool(x)
        assert not y.isnan().any()
        if pool.kernel_size == (2, 2):
            assert torch.equal(y.double(), want)
        else:
            assert torch.equal(y.double(), F.max_pool2d(x.double(), 3, 1, 1))


# 3. d nu / d beta of the normalized form at small beta (mpmath, 60 digits)
@pytest.mark.parametrize("dtype,betas,tol", [
    (torch.float64, [1e-8, 1e-6, 1e-3, 1.0, 30.0], 1e-6),
    (torch.float32, [1e-4, 1e-3, 1e-1, 1.0, 30.0], 1e-2)])
@pytest.mark.parametrize("normalized", [True, False])
def test_3_dnu_dbeta_against_mpmath(dtype, betas, tol, normalized):
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    rows[1] *= 100.0  # a wide row
    rows[2, :5] = rows[2, 0]  # ties
    rows[3] = torch.rand(9, generator=gen, dtype=torch.float64)
    x = rows.to(dtype)
    for beta in betas:
        b = torch.full((4, 1), beta, dtype=dtype, requires_grad=True)
        y = smooth_max(x, b, -1, normalized=normalized)
        (gb,) = torch.autograd.grad(y.sum(), b)
        # -H(p)/beta^2 near a one-hot p is a few ulps of log p's terms: an absolute floor
        # there; the normalized form's KL / beta^2 is held to the relative target alone
        floor = 0.0 if normalized else \
            8 * torch.finfo(dtype).eps * (1 + math.log(9)) / float(b[0, 0]) ** 2
        for r in range(4):
            want = dnu_dbeta_mp(x[r].tolist(), float(b[r, 0]), normalized)
            got = float(gb[r, 0])
            assert abs(got - want) <= tol * abs(want) + floor, (beta, r, got, want)


def test_3_dnu_dbeta_with_padding_matches_mpmath():
    """A padded border window counts its valid entries only (item 1), in beta's gradient too."""
    torch.manual_seed(4)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    beta = torch.tensor(1e-7, dtype=torch.float64, requires_grad=True)
    y = SmoothMaxPool2d(beta, 3, 2, 1, normalized=True)(x)
    g = torch.zeros_like(y)
    g[0, 0, 0, 0] = 1.0  # the corner window: x[0:2, 0:2]
    (gb,) = torch.autograd.grad(y, beta, g)
    want = dnu_dbeta_mp(x[0, 0, :2, :2].flatten().tolist(), 1e-7, True)
    assert abs(float(gb) - want) <= 1e-6 * abs(want)


# 4. swap_pools replaces every path of a shared pool
def test_4_swap_pools_shared_instances():
    pool = nn.MaxPool2d(2)
    seq = nn.Sequential(pool, nn.Conv2d(1, 1, 1), pool)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.p1 = nn.MaxPool2d(2)
            self.p2 = self.p1

        def forward(self, x):
            return self.p2(self.p1(x))

    for model in (seq, Twice()):
        swap_pools(model, 2.0)
        mods = dict(model.named_modules(remove_duplicate=False))
        pools = [m for n, m in mods.items() if n and "Pool" in type(m).__name__]
        assert len(pools) == 2 and all(type(m) is SmoothMaxPool2d for m in pools)
        assert pools[0] is pools[1]  # still one module, shared


# 5. ties="first" on per-channel betas with inf entries
def test_5_ties_first_per_channel_inf():
    x = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 1.0]]]], dtype=torch.float64,
                     requires_grad=True)
    beta = torch.tensor([INF, 3.0], dtype=torch.float64)
    for ks in (2, None):
        pool = SmoothMaxPool2d(beta, ks, ties="first")
        y = pool(x)
        (gx,) = torch.autograd.grad(y.sum(), x)
        mp = (F.max_pool2d(x, 2) if ks else F.adaptive_max_pool2d(x, 1))
        (gm,) = torch.autograd.grad(mp[:, 0].sum(), x)
        assert torch.equal(gx[:, 0], gm[:, 0])  # [1, 0], not [0.5, 0.5]
        ref = pool_reference(x, [3.0, 3.0], (2, 2), (2, 2), (0, 0), (1, 1), False)
        (gr,) = torch.autograd.grad(ref[:, 1].sum(), x)
        assert torch.allclose(gx[:, 1], gr[:, 1], atol=1e-12)
        assert torch.equal(y[:, 0].detach(), mp[:, 0].detach())


# 6. a +inf entry: NaN gradient at it only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_6_posinf_entry_gradient(dtype):
    x = torch.tensor([[INF, 100.0, 90.0, -5.0]], dtype=dtype, requires_grad=True)
    xr = x.detach().double().requires_grad_()
    ref = torch.logsumexp(2.0 * xr, -1) / 2.0  # torch's own: NaN at +inf, 0 elsewhere
    (gr,) = torch.autograd.grad(ref.sum(), xr)
    y = smooth_max(x, 2.0, -1)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert y.item() == INF
    assert torch.equal(gx.isnan(), gr.isnan()) and torch.equal(gx[0, 1:].double(), gr[0, 1:])
    pool = SmoothMaxPool2d(2.0, (1, 4))
    (gp,) = torch.autograd.grad(pool(x[None, None]).sum(), x)
    assert torch.equal(gp.isnan(), gr.isnan()) and torch.equal(gp[0, 1:].double(), gr[0, 1:])


# 7. MaxPool2d's positional signature
def test_7_positional_signature():
    x = torch.randn(1, 2, 9, 9)
    assert torch.equal(SmoothMaxPool2d(INF, 3, 1, 1)(x), nn.MaxPool2d(3, 1, 1)(x))  # 9x9
    p = SmoothMaxPool2d(4.0, 3, 2, 1, 2)
    assert (p.padding, p.dilation, p.normalized, p.learnable) == ((1, 1), (2, 2), False, False)
    assert SmoothMaxPool2d(INF, 3, 2, 1, 1, False, True)(x).shape == \
        nn.MaxPool2d(3, 2, 1, 1, False, True)(x).shape
    with pytest.raises(ConfigError, match="stride must be an int or a pair of ints, got True"):
        SmoothMaxPool2d(4.0, 3, True)
    with pytest.raises(ConfigError, match="return_indices=True"):
        SmoothMaxPool2d(4.0, 3, 2, 1, 1, True)
    with pytest.raises(TypeError):
        SmoothMaxPool2d(4.0, 3, 2, 1, 1, False, False, True)  # normalized is keyword-only
    with pytest.raises(ConfigError, match="kernel_size must be an int or a pair of ints, got 2.0"):
        SmoothMaxPool2d(4.0, 2.0)
    with pytest.raises(TypeError):
        SmoothAdaptiveMaxPool2d(4.0, 1, False, True)  # normalized is keyword-only


# 8. a tensor beta that requires grad keeps its gradient
def test_8_tensor_beta_requires_grad():
    beta = torch.tensor([1.5, 2.5], dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    SmoothMaxPool2d(beta, 2)(x).sum().backward()
    b2 = beta.detach().clone().requires_grad_()
    win = x.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)  # (1, 2, 2, 2, 4)
    ref = (torch.logsumexp(b2.view(2, 1, 1, 1) * win, -1) / b2.view(2, 1, 1)).sum()
    (gr,) = torch.autograd.grad(ref, b2)
    assert beta.grad is not None and torch.allclose(beta.grad, gr, rtol=1e-10)


# 9. ReLU(inplace=True) after a swapped pool at beta = inf
@pytest.mark.parametrize("ks", [2, None])
def test_9_inplace_relu_after_pool(ks):
    torch.manual_seed(9)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = nn.ReLU(inplace=True)(SmoothMaxPool2d(INF, ks)(x))
    (gx,) = torch.autograd.grad(y.sum(), x)
    xr = x.detach().requires_grad_()
    win = xr.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2) if ks else xr.flatten(2)
    ref = torch.relu(torch.amax(win, -1))  # torch.amax's autograd: ties shared
    (gr,) = torch.autograd.grad(ref.sum(), xr)
    assert torch.equal(gx, gr)


# 10. compile(fullgraph=True) and vmap over beta with tensor betas
def test_10_vmap_over_beta():
    torch.manual_seed(10)
    x = torch.randn(3, 5, dtype=torch.float64)
    betas = torch.tensor([[0.5], [2.0], [INF]], dtype=torch.float64)
    got = torch.func.vmap(lambda b: smooth_max(x, b[None].expand(3, 1), -1))(betas)
    want = torch.stack([torch.logsumexp(0.5 * x, -1) / 0.5, torch.logsumexp(2 * x, -1) / 2,
                        x.amax(-1)])
    assert torch.allclose(got, want, atol=1e-12)
    grads = torch.func.vmap(torch.func.grad(
        lambda b: smooth_max(x, b.expand(3, 1), -1).sum()))(betas[:2, :, None][:, 0])
    for b, g in zip((0.5, 2.0), grads):
        bb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        (gr,) = torch.autograd.grad((torch.logsumexp(bb * x, -1) / bb).sum(), bb)
        assert torch.allclose(g.sum(), gr, rtol=1e-10)


def test_10_compile_fullgraph_tensor_beta():
    torch._dynamo.reset()
    torch.manual_seed(10)
    pool = SmoothMaxPool2d(torch.tensor([0.5, 2.0, INF]), 2)
    learn = SmoothMaxPool2d(2.0, 2, learnable=True)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for m in (pool, learn):
        f = torch.compile(m, fullgraph=True, backend="aot_eager")
        y = f(x)
        (gx,) = torch.autograd.grad(y.sum(), x)
        y0 = m(x)
        (g0,) = torch.autograd.grad(y0.sum(), x)
        assert torch.allclose(y, y0, atol=1e-6) and torch.allclose(gx, g0, atol=1e-6)


# 11. int64 with padding; tiny beta refused on every path
def test_11_int64_and_tiny_beta():
    x = torch.randint(-50, 50, (1, 2, 5, 5))
    for pool in (SmoothMaxPool2d(INF, 3, 2, 1), SmoothMaxPool2d(INF, 3, 2, 1, ties="first"),
                 SmoothMaxPool2d(INF, 2)):
        want = nn.MaxPool2d(3, 2, 1)(x) if pool.kernel_size == (3, 3) else nn.MaxPool2d(2)(x)
        y = pool(x)
        assert y.dtype == torch.int64 and torch.equal(y, want)
    with pytest.raises(NotImplementedError):  # as nn.AdaptiveMaxPool2d refuses it
        nn.AdaptiveMaxPool2d(1)(x)
    with pytest.raises(NotImplementedError, match="SmoothMaxPool2d: "):
        SmoothMaxPool2d(INF)(x)
    with pytest.raises(TypeError, match="integer input"):
        SmoothMaxPool2d(2.0, 2)(x)
    for beta in (1e-39, 1e-38):
        for pool in (SmoothMaxPool2d(beta, 2), SmoothMaxPool2d(beta, 3, 1, 1)):
            with pytest.raises(ConfigError, match="underflows"):
                pool(torch.randn(1, 1, 4, 4))


# 12. autocast keeps max pooling in its input's dtype
@pytest.mark.parametrize("ks", [2, None])
def test_12_autocast_dtype(ks):
    x = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16)
    ref = nn.MaxPool2d(2) if ks else nn.AdaptiveMaxPool2d(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert SmoothMaxPool2d(INF, ks)(x).dtype == ref(x).dtype == torch.bfloat16
        assert SmoothMaxPool2d(INF, ks)(x.float()).dtype == ref(x.float()).dtype


# 13. dims, empty slices, bad types, bool / zero-channel inputs, NaN at beta = inf
def test_13_dims_empty_types():
    with pytest.raises(ShapeError, match="out of range"):
        smooth_max(torch.tensor(1.0), 2.0, dim=5)
    for d in (None, 1.0, True):
        with pytest.raises(TypeError, match="smooth_max: dim must be an int"):
            smooth_max(torch.randn(3), 2.0, dim=d)
    e = torch.zeros(3, 0, dtype=torch.float64, requires_grad=True)
    for beta in (2.0, INF):
        y = smooth_max(e, beta, -1)
        assert torch.equal(y, torch.logsumexp(e, -1))  # -inf, as torch.logsumexp
        y.sum().backward()
    with pytest.raises(TypeError, match="bool"):
        smooth_max(torch.ones(3, dtype=torch.bool), 2.0)
    for x in (torch.ones(1, 1, 4, 4, dtype=torch.bool), torch.randn(1, 0, 4, 4)):
        with pytest.raises((NotImplementedError, RuntimeError)) as ours:
            SmoothMaxPool2d(INF, 2)(x)
        with pytest.raises(type(ours.value)):
            nn.MaxPool2d(2)(x)
    # NaN at beta = inf: ties="first" is MaxPool2d (1 to the NaN); ties="shared" gives the
    # window 0 (docs/smoothmax.md, edge semantics: torch.amax's autograd gives NaN everywhere)
    x = torch.tensor([[[[math.nan, 1.0], [0.0, 2.0]]]], requires_grad=True)
    (g,) = torch.autograd.grad(SmoothMaxPool2d(INF, 2, ties="first")(x).sum(), x)
    (gr,) = torch.autograd.grad(nn.MaxPool2d(2)(x).sum(), x)
    assert torch.equal(g, gr)
    for ks in (2, None):
        y = SmoothMaxPool2d(INF, ks)(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert y.isnan().all() and torch.equal(g, torch.zeros_like(g))


# 14. a window entirely in padding is refused in one line, before any backward
@pytest.mark.parametrize("ties", ["shared", "first"])
@pytest.mark.parametrize("beta", [INF, 2.0])
def test_14_window_in_padding_refused(beta, ties):
    pool = SmoothMaxPool2d(beta, (2, 3), None, 1, (3, 2), ceil_mode=True, ties=ties)
    with pytest.raises(ShapeError, match=r"kernel_size=\(2, 3\).*entirely in the padding"):
        pool(torch.randn(1, 1, 2, 2, requires_grad=True))
