"""A differential harness: hypothesis searches the argument space of SmoothMaxPool2d (positional,
keyword and swap_pools calls), SmoothAdaptiveMaxPool2d and smooth_max / SmoothMax, and checks
forward, gradient, double backward, torch.func (vmap over x and over beta, jacrev, hessian),
torch.compile(fullgraph=True) and autocast against plain-torch references
(tests/smoothmax/references.py: per-window torch.logsumexp over the valid entries, nn.MaxPool2d,
torch.amax, autograd through them), never against another dnnlab path.

The fast suite runs a bounded number of examples from a fixed seed (derandomize=True); the slow
variants run 20x as many (CI's `make test-slow`)."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.nn import SmoothAdaptiveMaxPool2d, SmoothMax, SmoothMaxPool2d, swap_pools
from dnnlab.smoothmax.functional import smooth_max
from tests.smoothmax.references import lse_reference, out_len, pool_reference

INF = math.inf
FAST = 25  # examples per property in `make test`; the slow suite runs 20x as many
FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _settings(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _values(data, shape, dtype, specials: bool):
    """N(0, 1) values with, drawn by hypothesis, ties (rounded), ReLU zeros, 1e30 and
    +-inf / NaN entries."""
    n = math.prod(shape)
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kind = data.draw(st.sampled_from(["normal", "ties", "relu", "large"]), label="values")
    if kind == "ties":
        x = x.mul(2).round()
    elif kind == "relu":
        x = x.clamp_min(0)
    elif kind == "large":
        x = x * 1e30 if dtype in (torch.float64, torch.float32) else x * 1e3
    if specials and n:
        for v in data.draw(st.lists(st.sampled_from([INF, -INF, math.nan]), max_size=2),
                           label="specials"):
            x[data.draw(st.integers(0, n - 1), label="at")] = v
    if not dtype.is_floating_point:
        x = torch.nan_to_num(x, nan=0.0, posinf=50.0, neginf=-50.0).clamp(-50, 50).round()
    return x.reshape(shape).to(dtype)


def _layout(data, x):
    """x as is, channels_last, or a non-contiguous view with the same values."""
    how = data.draw(st.sampled_from(["contiguous", "channels_last", "strided"]), label="layout")
    if how == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if how == "strided":
        return torch.stack([x, x], -1)[..., 0]  # a view with stride 2 along W
    return x


def _tol(dtype):
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3,
            torch.bfloat16: 1.6e-2}[dtype]


def _close(ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> None:
    """Equal NaN and infinity positions (with signs), finite entries within atol + rtol |ref|."""
    o, r = ours.double(), ref.double()
    assert o.shape == r.shape, (o.shape, r.shape)
    assert torch.equal(o.isnan(), r.isnan()), (o, r)
    fin = torch.isfinite(r)
    assert torch.equal(o[~fin & ~r.isnan()], r[~fin & ~r.isnan()]), (o, r)
    d = (o[fin] - r[fin]).abs()
    assert (d <= atol + rtol * r[fin].abs()).all(), (d.max().item(), o, r)


def _pool_case(data):
    """A SmoothMaxPool2d call drawn from MaxPool2d's argument space, good and bad."""
    dtype = data.draw(st.sampled_from(FLOATS + (torch.int64,)), label="dtype")
    unbatched = data.draw(st.booleans(), label="unbatched")
    b = data.draw(st.sampled_from([1, 2, 0]), label="batch")
    c = data.draw(st.integers(1, 3), label="channels")
    wild = data.draw(st.integers(0, 7), label="wild arguments") == 0  # MaxPool2d may refuse
    pair = lambda lo, hi, lab: data.draw(  # noqa: E731
        st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi))),
        label=lab)
    if wild:
        h, w = data.draw(st.integers(1, 7), label="H"), data.draw(st.integers(1, 7), label="W")
        k, p, d = pair(1, 4, "kernel"), pair(0, 2, "padding"), pair(1, 3, "dilation")
        s = data.draw(st.one_of(st.none(), st.integers(1, 3),
                                st.tuples(st.integers(0, 3), st.integers(1, 3))), label="stride")
    else:  # arguments MaxPool2d takes: padding <= k/2, an input the dilated kernel fits
        kd = [(data.draw(st.integers(1, 3), label="k"), data.draw(st.integers(1, 2), label="d"))
              for _ in range(2)]
        pp = [data.draw(st.integers(0, kk // 2), label="p") for kk, _ in kd]
        hw = [data.draw(st.integers(max(1, dd * (kk - 1) + 1 - 2 * q), 7), label="size")
              for (kk, dd), q in zip(kd, pp)]
        h, w = hw
        k, d, p = (kd[0][0], kd[1][0]), (kd[0][1], kd[1][1]), tuple(pp)
        s = data.draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
                      label="stride")
        if data.draw(st.booleans(), label="as ints") and k[0] == k[1] and d[0] == d[1] \
                and p[0] == p[1]:
            k, d, p = k[0], d[0], p[0]
    ceil = data.draw(st.booleans(), label="ceil_mode")
    kinds = ["tiny", "half", "two", "thirty", "inf"] + (["huge"] if dtype is not torch.float64
                                                        else [])
    if dtype.is_floating_point:
        kinds += ["per_channel_inf", "learnable", "requires_grad"]
    beta_kind = data.draw(st.sampled_from(kinds), label="beta")
    normalized = data.draw(st.booleans(), label="normalized")
    ties = data.draw(st.sampled_from(["shared", "first"]), label="ties")
    call = data.draw(st.sampled_from(["positional", "keyword", "swap_pools"]), label="call")
    shape = (c, h, w) if unbatched else (b, c, h, w)
    x = _values(data, shape, dtype, specials=dtype.is_floating_point)
    return dict(dtype=dtype, shape=shape, k=k, s=s, p=p, d=d, ceil=ceil, beta_kind=beta_kind,
                normalized=normalized, ties=ties, call=call, x=_layout(data, x))


def _beta_of(kind, c, dtype):
    """(the beta given to the layer, the per-channel floats of the reference)."""
    fd = dtype if dtype.is_floating_point else torch.float64
    table = {"tiny": 1e-6 if fd is torch.float64 else 1e-2, "half": 0.5, "two": 2.0,
             "thirty": 30.0, "inf": INF, "huge": 1e39}
    if kind in table:
        return table[kind], [table[kind]] * c
    if kind == "per_channel_inf":
        vals = [INF, 1.5, 4.0][:c]
        return torch.tensor(vals, dtype=torch.float64), vals
    vals = [0.7, 1.9, 3.1][:c]
    t = torch.tensor(vals, dtype=torch.float64, requires_grad=(kind == "requires_grad"))
    return t, vals


def _build(case, beta):
    k, s, p, d, ceil = case["k"], case["s"], case["p"], case["d"], case["ceil"]
    kw = dict(normalized=case["normalized"], ties=case["ties"],
              learnable=case["beta_kind"] == "learnable")
    if case["call"] == "positional":
        return SmoothMaxPool2d(beta, k, s, p, d, False, ceil, **kw)
    if case["call"] == "keyword":
        return SmoothMaxPool2d(beta, kernel_size=k, stride=s, padding=p, dilation=d,
                               ceil_mode=ceil, **kw)
    net = nn.Sequential(nn.MaxPool2d(k, s, p, d, ceil_mode=ceil))
    return swap_pools(net, beta, **kw)[0]


def _as2(v, default=None):
    v = default if v is None else v
    return (v, v) if isinstance(v, int) else tuple(v)


def _all_in_padding(case, h, w) -> bool:
    k, s, p, d = _as2(case["k"]), _as2(case["s"], case["k"]), _as2(case["p"]), _as2(case["d"])
    for n, kk, ss, pp, dd in zip((h, w), k, s, p, d):
        for i in range(out_len(n, kk, ss, pp, dd, case["ceil"])):
            if not any(0 <= i * ss - pp + a * dd < n for a in range(kk)):
                return True
    return False


def _pool_reference(case, x, betas):
    """The per-window logsumexp reference; channels at beta = inf with ties="first" take
    F.max_pool2d's autograd (torch's one-index gradient)."""
    k, s = _as2(case["k"]), _as2(case["s"], case["k"])
    args = (k, s, _as2(case["p"]), _as2(case["d"]), case["ceil"])
    x4 = x if x.dim() == 4 else x[None]
    ref = pool_reference(x4, betas, *args, normalized=case["normalized"])
    if case["ties"] == "first" and any(math.isinf(b) for b in betas):
        first = F.max_pool2d(x4, *args)
        pick = torch.tensor([math.isinf(b) for b in betas]).view(-1, 1, 1)
        ref = torch.where(pick, first, ref)
    return ref if x.dim() == 4 else ref[0]


def check_pool(case):
    x, dtype = case["x"], case["dtype"]
    c, h, w = x.shape[-3:]
    beta, betas = _beta_of(case["beta_kind"], c, dtype)
    try:
        pool = _build(case, beta)
    except ConfigError:  # stride 0 in a pair: refused at construction, as MaxPool2d's call is
        with pytest.raises(RuntimeError):
            F.max_pool2d(torch.zeros(1, 1, h, w), case["k"], case["s"], case["p"], case["d"],
                         case["ceil"])
        return
    try:
        F.max_pool2d(x.double() if dtype.is_floating_point else x, case["k"], case["s"],
                     case["p"], case["d"], case["ceil"])
    except (RuntimeError, NotImplementedError) as e:  # refused alike
        event("refused as MaxPool2d refuses")
        with pytest.raises(type(e), match=re.escape(str(e).splitlines()[0][:40])):
            pool(x)
        return
    if _all_in_padding(case, h, w):  # torch accepts it; its backward corrupts memory
        event("a window in the padding: refused")
        with pytest.raises(ShapeError, match="entirely in the padding"):
            pool(x)
        return
    cd = torch.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) \
        else torch.float64  # the compute dtype (integers: at beta = inf only)
    finite = isinstance(beta, torch.Tensor) or beta <= torch.finfo(cd).max
    if not dtype.is_floating_point:
        if finite:
            with pytest.raises(TypeError, match="integer input"):
                pool(x)
            return
        assert torch.equal(pool(x), F.max_pool2d(x, case["k"], case["s"], case["p"],
                                                 case["d"], case["ceil"]))
        return
    if not finite:
        betas = [INF] * c  # above the compute dtype's max: max pooling
    # forward against the float64 reference, rounded to x's dtype
    xd = x.detach().double().requires_grad_()
    ref = _pool_reference(case, xd, betas)
    xo = x.detach().clone().requires_grad_()
    y = pool(xo)
    assert y.dtype == dtype and y.shape == ref.shape
    n = max(1, math.prod(_as2(case["k"])))
    bmin = min(betas)
    eps_c = 1e-16 if dtype is torch.float64 else 1.2e-7
    scale = ref.detach().abs().nan_to_num(0, 0, 0)
    atol = 8 * eps_c * (1 + math.log(n)) / bmin + 8 * eps_c * float(scale.max() if
                                                                    scale.numel() else 0)
    _close(y.detach(), ref.detach().to(dtype), atol, 2 * _tol(dtype))
    event(f"forward checked ({dtype})")
    if dtype not in (torch.float64, torch.float32) or ref.numel() == 0:
        return
    event("gradient checked")
    # gradient in x (and in beta where it trains) against autograd through the reference
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (gr,) = torch.autograd.grad(ref, xd, g)
    (gx,) = torch.autograd.grad(y, xo, g.to(dtype))
    # documented differences (docs/smoothmax.md, edge semantics): a NaN window at beta = inf
    # with ties shared gets 0, and an all -inf window gets 0 (torch.amax: 1 or NaN,
    # torch.logsumexp: NaN)
    if not x.isnan().any() and not ref.isneginf().any():
        _close(gx, gr.to(dtype), 1e3 * eps_c * (1 + float(g.abs().max())), 1e3 * eps_c)
    if dtype is torch.float64 and torch.isfinite(x).all() and x.numel() <= 64 and finite:
        _check_double_backward(pool, x, ref_fn=lambda t: _pool_reference(case, t, betas))
        event("double backward checked")


def _check_double_backward(f, x, ref_fn):
    """A Hessian-vector product by double backward against the reference's."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    outs = []
    for fn in (f, ref_fn):
        xi = x.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(xi).sum(), xi, create_graph=True)
        hv = torch.autograd.grad((g * v).sum(), xi, allow_unused=True)[0] \
            if g.requires_grad else None  # a gradient constant in x (beta = inf)
        outs.append(torch.zeros_like(xi) if hv is None else hv)
    _close(outs[0], outs[1], 1e-8, 1e-8)




def _pool_property(data):
    check_pool(_pool_case(data))


test_pool_harness = _settings(6 * FAST)(given(st.data())(_pool_property))
test_pool_harness_slow = pytest.mark.slow(_settings(120 * FAST)(given(st.data())(_pool_property)))


# smooth_max / SmoothMax: shapes (0-d, empty, 1-3 dims), dims, keepdim, normalized, betas
def _smooth_case(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    nd = data.draw(st.integers(0, 3), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(0, 4), min_size=nd, max_size=nd), label="shape"))
    if nd == 0:
        dims = data.draw(st.sampled_from([0, -1]), label="dim")
    else:
        dims = data.draw(st.one_of(st.integers(-nd, nd - 1),
                                   st.sets(st.integers(0, nd - 1), min_size=1).map(tuple)),
                         label="dim")
    keepdim = data.draw(st.booleans(), label="keepdim")
    normalized = data.draw(st.booleans(), label="normalized")
    beta_kind = data.draw(st.sampled_from(["float", "inf", "tensor", "tensor_inf", "module"]),
                          label="beta")
    x = _values(data, shape, dtype, specials=True)
    return dict(dtype=dtype, x=x, dims=dims, keepdim=keepdim, normalized=normalized,
                beta_kind=beta_kind, beta=data.draw(st.sampled_from([1e-3, 0.5, 3.0, 40.0]),
                                                    label="beta value"))


def check_smooth(case):
    x, dtype, dims = case["x"], case["dtype"], case["dims"]
    nd = x.dim()
    dl = (dims,) if isinstance(dims, int) else dims
    dl = tuple(sorted({d % max(nd, 1) for d in dl}))
    red = [1 if i in dl else n for i, n in enumerate(x.shape)]
    kind, bv = case["beta_kind"], case["beta"]
    if kind == "inf":
        beta = INF
    elif kind in ("tensor", "tensor_inf"):
        beta = torch.full(red, bv, dtype=torch.float64)
        if kind == "tensor_inf" and beta.numel():
            beta.view(-1)[0] = INF
        beta.requires_grad_(kind == "tensor")
    else:
        beta = bv
    xo = x.detach().clone().requires_grad_()
    if kind == "module":
        y = SmoothMax(beta, dims, keepdim=case["keepdim"])(xo)
        normalized = False
    else:
        normalized = case["normalized"]
        y = smooth_max(xo, beta, dims, case["keepdim"], normalized)
    xd = x.detach().double().requires_grad_()
    x_ref = xd if nd else xd.reshape(1)
    ref = lse_reference(x_ref, beta.detach() if isinstance(beta, torch.Tensor) and nd else
                        (float(beta.reshape(-1)[0]) if isinstance(beta, torch.Tensor) else beta),
                        dl if nd else (0,), normalized)
    if case["keepdim"] and nd:
        ref = ref.reshape(red)
    if not nd:
        ref = ref.reshape(())
    assert y.dtype == dtype and y.shape == ref.shape
    n0 = math.prod(x.shape[d] for d in dl) if nd else 1
    n = max(1, n0)
    eps_c = 1e-16 if dtype is torch.float64 else 1.2e-7
    scale = float(ref.detach().abs().nan_to_num(0, 0, 0).max()) if ref.numel() else 0.0
    _close(y.detach(), ref.detach().to(dtype),
           8 * eps_c * ((1 + math.log(n)) / bv + scale), 2 * _tol(dtype))
    event(f"forward checked ({dtype})")
    if dtype not in (torch.float64, torch.float32) or not ref.numel() or n0 == 0:
        return
    event("gradient checked")
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (gr,) = torch.autograd.grad(ref, xd, g)
    (gx,) = torch.autograd.grad(y, xo, g.to(dtype))
    if not (kind in ("inf", "tensor_inf") and x.isnan().any()) and not ref.isneginf().any():
        _close(gx, gr.to(dtype), 1e3 * eps_c * (1 + float(g.abs().max())), 1e3 * eps_c)
    if dtype is torch.float64 and nd and torch.isfinite(x).all() and kind == "float" \
            and x.numel() <= 24:
        _check_double_backward(lambda t: smooth_max(t, beta, dims, False, normalized), x,
                               lambda t: lse_reference(t, beta, dl, normalized))
        _check_func(x, beta, dims, dl, normalized)
        event("double backward and torch.func checked")


def _check_func(x, beta, dims, dl, normalized):
    """torch.func: jacrev and hessian of a sum, vmap over x, vmap over beta."""
    f = lambda t: smooth_max(t, beta, dims, False, normalized).sum()  # noqa: E731
    r = lambda t: lse_reference(t, beta, dl, normalized).sum()  # noqa: E731
    _close(torch.func.jacrev(f)(x), torch.func.jacrev(r)(x), 1e-10, 1e-10)
    if x.numel() <= 16:
        _close(torch.func.hessian(f)(x), torch.func.hessian(r)(x), 1e-9, 1e-9)
    xs = torch.stack([x, x * 2 - 1])
    _close(torch.func.vmap(f)(xs), torch.stack([r(xs[0]), r(xs[1])]), 1e-10, 1e-10)
    red = [1 if i in dl else n for i, n in enumerate(x.shape)]
    bs = torch.tensor([0.5, 3.0], dtype=torch.float64)
    got = torch.func.vmap(lambda b: smooth_max(x, b.expand(red), dims, False, normalized))(bs)
    want = torch.stack([lse_reference(x, float(b), dl, normalized) for b in bs])
    _close(got, want, 1e-10, 1e-10)


def _smooth_property(data):
    check_smooth(_smooth_case(data))


test_smooth_max_harness = _settings(4 * FAST)(given(st.data())(_smooth_property))
test_smooth_max_harness_slow = pytest.mark.slow(
    _settings(80 * FAST)(given(st.data())(_smooth_property)))


# SmoothAdaptiveMaxPool2d: output sizes that divide the input, against the window reference
def _adaptive_property(data):
    dtype = data.draw(st.sampled_from((torch.float64, torch.float32)), label="dtype")
    oh, ow = data.draw(st.integers(1, 3), label="oh"), data.draw(st.integers(1, 3), label="ow")
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    beta = data.draw(st.sampled_from([0.5, 4.0, INF]), label="beta")
    ties = data.draw(st.sampled_from(["shared", "first"]), label="ties")
    x = _values(data, (2, 2, oh * kh, ow * kw), dtype, specials=False).requires_grad_()
    y = SmoothAdaptiveMaxPool2d(beta, (oh, ow), ties=ties)(x)
    xd = x.detach().double().requires_grad_()
    if math.isinf(beta) and ties == "first":
        ref = F.adaptive_max_pool2d(xd, (oh, ow))
    else:
        ref = pool_reference(xd, beta, (kh, kw), (kh, kw), (0, 0), (1, 1), False)
    _close(y.detach(), ref.detach().to(dtype), 1e-5, 2 * _tol(dtype))
    g = torch.randn(ref.shape, dtype=torch.float64)
    _close(torch.autograd.grad(y, x, g.to(dtype))[0],
           torch.autograd.grad(ref, xd, g)[0].to(dtype), 1e-4, 1e-4)


test_adaptive_harness = _settings(FAST // 2)(given(st.data())(_adaptive_property))
test_adaptive_harness_slow = pytest.mark.slow(
    _settings(10 * FAST)(given(st.data())(_adaptive_property)))


# autocast: max pooling keeps its input's dtype (nn.MaxPool2d's), smooth pooling computes in
# float32; values as the float64 reference rounded
def _autocast_property(data):
    dtype = data.draw(st.sampled_from((torch.bfloat16, torch.float32)), label="dtype")
    beta = data.draw(st.sampled_from([2.0, INF]), label="beta")
    ks = data.draw(st.sampled_from([2, None, 3]), label="kernel")
    x = _values(data, (1, 2, 6, 6), dtype, specials=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = SmoothMaxPool2d(beta, ks, 1 if ks == 3 else None, 1 if ks == 3 else 0)(x)
        ref_pool = nn.MaxPool2d(3, 1, 1) if ks == 3 else nn.MaxPool2d(2) if ks else \
            nn.AdaptiveMaxPool2d(1)
        want_dtype = ref_pool(x).dtype if math.isinf(beta) else torch.float32
    assert y.dtype == want_dtype
    k = ks or 6
    ref = pool_reference(x.double(), beta, (k, k), (1, 1) if ks == 3 else (k, k),
                         (1, 1) if ks == 3 else (0, 0), (1, 1), False)
    _close(y, ref.to(y.dtype), 1e-5, 2 * _tol(dtype))


test_autocast_harness = _settings(FAST // 4)(given(st.data())(_autocast_property))


# torch.compile(fullgraph=True): a handful of cases (compiling is slow), more in the slow suite
def _compile_property(data):
    torch._dynamo.reset()
    kind = data.draw(st.sampled_from(["two", "inf", "per_channel_inf", "learnable"]),
                     label="beta")
    ks = data.draw(st.sampled_from([2, None, 3]), label="kernel")
    normalized = data.draw(st.booleans(), label="normalized")
    beta, betas = _beta_of(kind, 3, torch.float32)
    pool = SmoothMaxPool2d(beta, ks, 1 if ks == 3 else None, 1 if ks == 3 else 0,
                           normalized=normalized, learnable=kind == "learnable")
    x = _values(data, (2, 3, 6, 6), torch.float32, specials=False).requires_grad_()
    y = torch.compile(pool, fullgraph=True, backend="aot_eager")(x)
    k = ks or 6
    args = ((k, k), (1, 1) if ks == 3 else (k, k), (1, 1) if ks == 3 else (0, 0), (1, 1), False)
    xd = x.detach().double().requires_grad_()
    ref = pool_reference(xd, betas, *args, normalized=normalized)
    _close(y.detach(), ref.detach().float(), 1e-5, 1e-4)
    g = torch.randn(ref.shape, dtype=torch.float64)
    _close(torch.autograd.grad(y, x, g.float())[0], torch.autograd.grad(ref, xd, g)[0].float(),
           1e-4, 1e-4)


test_compile_harness = _settings(3)(given(st.data())(_compile_property))
test_compile_harness_slow = pytest.mark.slow(_settings(60)(given(st.data())(_compile_property)))
