"""Smooth max (log-sum-exp with a temperature) with its own forward and backward.

docs/math.md (1a)-(1c), for x in R^n and beta > 0:

    nu_beta(x) = (1/beta) log sum_i exp(beta x_i)                       (docs/math.md (1a))
    0 <= nu_beta(x) - max_i x_i <= log(n) / beta   ->  nu_beta -> max   (docs/math.md (1a))
    grad nu_1 = softmax(x)                                              (docs/math.md (1b))
    grad nu_beta = softmax(beta x)  ->  one-hot of the argmax           (docs/math.md (1c))

Numerics. With m = max_i x_i, z_i = beta (x_i - m) <= 0 and r = log sum_i exp(z_i):

    nu = m + r / beta              (docs/math.md (1a): factor exp(beta x*) out)
    softmax(beta x)_i = exp(z_i - r) = exp(z_i) / sum_j exp(z_j)        (docs/math.md (1c))

so beta * x is never formed unshifted: z <= 0, exp(z) <= 1, 1 <= sum exp(z) <= n and
0 <= r <= log n, whatever |x| (up to float32's largest) or beta (up to 1e30 and inf).
The backward recomputes z from the saved input and the saved shift m and s = sum exp(z)
(softmax = exp(z) / s), both of the reduced shape, so it keeps only the input alive (which
the caller holds anyway) plus two small tensors; torch.logsumexp(beta * x) / beta keeps the
full-size beta * x instead, and allocates three more full-size temporaries in its backward.
"""
import math

import torch
from torch.autograd import forward_ad
from torch.overrides import handle_torch_function, has_torch_function_unary

from dnnlab.core import amp
from dnnlab.core.beta import to_float
from dnnlab.core.dtypes import compute_dtype
from dnnlab.core.errors import ConfigError, ShapeError

__all__ = ["smooth_max"]


def _dims(dim, ndim: int) -> tuple[int, ...]:
    """`dim` (an int or a tuple of ints) as a sorted tuple of non-negative ints."""
    if isinstance(dim, int) and not isinstance(dim, bool):
        dims = (dim,)
    elif isinstance(dim, (tuple, list)) and all(
            isinstance(d, int) and not isinstance(d, bool) for d in dim):
        dims = tuple(dim)
    else:
        raise TypeError(f"smooth_max: dim must be an int or a tuple of ints, got {dim!r}")
    if not dims:
        raise ShapeError("smooth_max: dim must name at least one dimension, got ()")
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ShapeError(f"smooth_max: dim {d} is out of range for a {ndim}-d input")
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"smooth_max: dim {dim} names a dimension twice")
    return tuple(sorted(out))


def _check_scalar_beta(beta: float, cdtype: torch.dtype) -> float:
    """beta in (0, inf]; a beta above the compute dtype's largest finite value is inf."""
    if math.isnan(beta) or beta <= 0:
        raise ConfigError(f"smooth_max: beta must be in (0, inf], got {beta}")
    info = torch.finfo(cdtype)
    if beta < info.tiny:
        raise ConfigError(
            f"smooth_max: beta must be in (0, inf], got {beta}, which underflows {cdtype}"
        )
    # nu - max <= log(n)/beta (docs/math.md (1a)) is below any resolution there: exactly max.
    return math.inf if beta > info.max else beta


def _check_tensor_beta(beta: torch.Tensor, cdtype: torch.dtype, reduced: torch.Size):
    """A tensor beta cast to the compute dtype; broadcastable to `reduced`, entries in (0, inf]."""
    if not beta.is_floating_point():
        raise ConfigError(f"smooth_max: a tensor beta must be floating point, got {beta.dtype}")
    try:
        ok = torch.broadcast_shapes(beta.shape, reduced) == reduced
    except RuntimeError:
        ok = False
    if not ok:
        raise ShapeError(
            f"smooth_max: beta of shape {tuple(beta.shape)} does not broadcast to the reduced "
            f"shape {tuple(reduced)} (the input's shape with the reduced dims kept as 1)"
        )
    b = beta.detach().to(cdtype)
    if b.is_meta or traced(b):  # no values to check (shape checks and op counting run on
        return b  # meta); a traced or transformed beta is checked where it is built
    bad = torch.isnan(b) | (b < torch.finfo(cdtype).tiny)  # nonpositive, NaN or underflowing
    if bool(bad.any()):
        value = beta.detach()[bad][0].item()  # the first bad entry, in the caller's dtype
        raise ConfigError(
            f"smooth_max: beta must be in (0, inf], got a tensor with entry {value} "
            f"(shape {tuple(beta.shape)})"
        )
    return b


def traced(t: torch.Tensor) -> bool:
    """True under torch.compile's tracing or for a torch.func-wrapped tensor (vmap, grad,
    jvp): no host-side look at values there (a graph break, or an error under vmap)."""
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(t)


def _shift(m: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """The shift of each slice, like torch.logsumexp's: the max, 0 for a NaN or all -inf slice,
    and the largest finite value for a +inf max, so that finite entries get z = beta (x - shift)
    <= 0 (their softmax weight exp(z) / inf = 0) and only the +inf entries get NaN."""
    m = m if m.dtype == cdtype else m.to(cdtype)
    return torch.nan_to_num(m, nan=0.0, posinf=torch.finfo(cdtype).max, neginf=0.0)


def _has_inf(beta_c: torch.Tensor):
    """The mask of beta's infinite entries, or None when it has none (decided on the host only
    outside tracing and transforms, where the masked form is always taken)."""
    if beta_c.is_meta:
        return None
    inf_mask = torch.isinf(beta_c)
    if traced(beta_c) or bool(inf_mask.any()):
        return inf_mask
    return None


def dnu_dbeta(x, z_shift, s, b, dims, cdtype, log_n, valid):
    """d nu / d beta per slice (docs/math.md (1a), differentiated in beta), not differentiable
    again. With p = softmax(beta x) and H(p) = -sum p log p, it is -H(p) / beta^2, and
    for the normalized form (log n - H(p)) / beta^2 = KL(p || uniform) / beta^2. At small
    beta (spread beta (max - min) <= 1) KL is formed around the slice's mean instead, where
    log n - H(p) would cancel: with a_i = beta (x_i - mean), e_i = expm1(a_i), M = mean e,

        KL = sum_i (p_i - 1/n) a_i + mean a - log1p(M),  p_i - 1/n = (e_i - M) / (n (1 + M)),

    every term of order beta^2 formed without a difference of O(1) terms. `valid` (bool,
    broadcastable to x) marks the entries that count in n (padding does not); log_n is None
    (not normalized), a float or a tensor broadcastable to the reduced shape."""
    xc = x if x.dtype == cdtype else x.to(cdtype)
    t = (xc - z_shift) * b - torch.log(s)  # log p = beta (x - m) - r (b may be batched)
    p = torch.exp(t)  # (..., n, ...) softmax(beta x)  (docs/math.md (1c))
    neg_h = torch.special.xlogy(p, p).sum(dims, keepdim=True)  # (..., 1, ...) -H(p)
    del t
    if log_n is None:
        return neg_h / (b * b)
    generic = neg_h + log_n  # KL(p || uniform) = log n - H(p)
    if valid is None:
        lo = torch.amin(xc, dims, keepdim=True)
        hi = torch.amax(xc, dims, keepdim=True)
        n = math.prod([x.shape[d] for d in dims]) if not isinstance(log_n, torch.Tensor) \
            else torch.exp(log_n).round()
        xm = xc
    else:
        lo = torch.amin(torch.where(valid, xc, math.inf), dims, keepdim=True)
        hi = torch.amax(torch.where(valid, xc, -math.inf), dims, keepdim=True)
        n = valid.to(cdtype).sum(dims, keepdim=True)
        xm = torch.where(valid, xc, 0.0)
    small = (hi - lo) * b <= 1.0  # (..., 1, ...) False for NaN, inf or a -inf entry
    mean = torch.where(small, xm.sum(dims, keepdim=True) / n, 0.0)  # (..., 1, ...)
    a = (xc - mean) * b  # (..., n, ...) beta (x - mean)
    keep = small if valid is None else small & valid
    a = torch.where(keep, a, 0.0)  # 0 outside the small slices and at padding: finite
    e = torch.expm1(a)
    big_m = e.sum(dims, keepdim=True) / n  # (..., 1, ...) M = mean expm1(a) = O(beta^2)
    kl = ((e - big_m) * a).sum(dims, keepdim=True) / (n * (1 + big_m)) \
        + a.sum(dims, keepdim=True) / n - torch.log1p(big_m)
    return torch.where(small, kl, generic) / (b * b)


def _argmax_weights(x, m, dims, cdtype):
    """The limit of softmax(beta x) as beta -> inf: the argmax one-hot, ties shared equally
    (docs/math.md (1c)); zero for an all -inf slice, whose max is not attained by a finite value."""
    hit = (x == m) & (m > -math.inf)  # (..., n, ...) bool
    w = hit.to(cdtype)  # (..., n, ...)
    count = w.sum(dims, keepdim=True).clamp_min_(1.0)  # (..., 1, ...)
    return w.div_(count)


class _SmoothMax(torch.autograd.Function):
    """nu_beta over `dims`. `beta` is the caller's tensor (so autograd sees it) or None;
    `beta_c` is beta as a float (maybe inf) or as a tensor of the compute dtype broadcastable
    to `red_shape`, the input's shape with the reduced dims kept as 1 (maybe with inf entries).
    `log_n`: None, or log of the number of entries per slice for the normalized form (a float,
    or a tensor broadcastable to `red_shape` when windows have padding); `valid`: None, or a
    bool mask broadcastable to x of the entries that count in n (not padding).
    """

    generate_vmap_rule = True  # torch.func.vmap: forward, backward and jvp are plain ops

    @staticmethod
    def forward(x, beta, beta_c, dims, red_shape, out_shape, log_n, valid):
        # x: (..., n, ...) reduced over dims -> (nu, shift, s): nu of red_shape (..., 1, ...)
        # or without the 1s; shift and s (..., 1, ...) are intermediates the backward reuses
        # (non-differentiable outputs: setup_context has no other way to see them)
        cdtype = compute_dtype(x.dtype)
        tensor_beta = isinstance(beta_c, torch.Tensor)
        if not tensor_beta and beta_c == math.inf:
            # beta = inf: nu_inf = max x (docs/math.md (1a), limit); the backward is the one-hot
            none = x.new_empty((0,), dtype=cdtype)
            return (torch.amax(x, dims, keepdim=out_shape == red_shape),  # (..., 1, ...) or (...)
                    none, none.clone())

        m = torch.amax(x, dims, keepdim=True)  # (..., 1, ...) the max, exact in any dtype
        inf_mask = _has_inf(beta_c) if tensor_beta else None
        if inf_mask is not None:
            beta_c = beta_c.masked_fill(inf_mask, 1.0)  # finite stand-in, replaced below
        shift = _shift(m, cdtype)  # (..., 1, ...)
        z = torch.sub(x, shift)  # (..., n, ...) x - m <= 0, in the compute dtype
        if tensor_beta and traced(beta_c):  # a batched beta (vmap) into z: out of place
            z = z * beta_c
        elif tensor_beta or beta_c != 1.0:
            z.mul_(beta_c)  # z = beta (x - m) <= 0: never beta x unshifted (docs/math.md (1a))
        s = z.exp_().sum(dims, keepdim=True)  # (..., 1, ...) s = sum exp(z) in [1, n]
        del z
        r = torch.log(s)  # (..., 1, ...) r in [0, log n]
        if log_n is not None:
            # nu - log(n)/beta: r - log(n) is formed before the division by beta, so no large
            # log(n)/beta cancels at small beta
            r = r.sub_(log_n) if not isinstance(log_n, torch.Tensor) else r - log_n
        if not tensor_beta:
            # nu = m + r / beta  (docs/math.md (1a), first line), one fused op into a fresh tensor
            nu = torch.add(shift.view(out_shape), r.view(out_shape), alpha=1.0 / beta_c)
        else:
            nu = torch.add(shift, r / beta_c)  # (..., 1, ...) nu = m + r / beta  (1a)
            if inf_mask is not None:
                nu = torch.where(inf_mask, m.to(cdtype), nu)  # nu_inf = max x (docs/math.md (1a))
            nu = nu.reshape(out_shape)
        # s = 0 only for an all -inf slice, where every exp(z) is 0 anyway: clamp so that the
        # backward's exp(z) / s is 0 there, not 0/0.
        s.clamp_min_(1.0)
        nu = nu if nu.dtype == x.dtype and nu._base is None else nu.to(x.dtype, copy=True)
        return nu, shift, s

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, beta, beta_c, dims, red_shape, out_shape, log_n, valid = inputs
        _, shift, s = output
        ctx.mark_non_differentiable(shift, s)
        cdtype = compute_dtype(x.dtype)
        tensor_beta = isinstance(beta_c, torch.Tensor)
        ctx.dims, ctx.cdtype, ctx.x_dtype, ctx.red_shape = dims, cdtype, x.dtype, red_shape
        ctx.out_shape = out_shape
        ctx.beta_c = None if tensor_beta else beta_c
        ctx.beta_shape = beta.shape if tensor_beta else None
        ctx.beta_dtype = beta.dtype if tensor_beta else None
        if not tensor_beta and beta_c == math.inf:
            ctx.mode = "inf"
            ctx.save_for_backward(x)  # the backward recomputes the max: the output may change
            ctx.save_for_forward(x)
            return
        inf_mask = m = None
        if tensor_beta:
            inf_mask = _has_inf(beta_c)
            if inf_mask is not None:
                beta_c = beta_c.masked_fill(inf_mask, 1.0)  # the forward's finite stand-in
                m = torch.amax(x, dims, keepdim=True)
        ctx.mode = "finite"
        ctx.log_n, ctx.valid = log_n, valid
        saved = (x, shift, s, beta_c if tensor_beta else None, m, inf_mask,
                 beta if tensor_beta else None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, g, _g_shift=None, _g_s=None):
        if torch.is_grad_enabled():  # create_graph=True: a gradient that has its own gradient
            return _backward_graph(ctx, g)
        return _backward(ctx, g)

    @staticmethod
    def jvp(ctx, tx, tbeta, *_):
        return _jvp(ctx, tx, tbeta), None, None


_apply_smooth_max = amp.applier(_SmoothMax, torch.float32)
_NONES = (None,) * 6  # the gradients of beta_c, dims, red_shape, out_shape, log_n, valid


class _SmoothMaxEager(torch.autograd.Function):
    """The fast path of _SmoothMax for plain tensors: a float beta in (0, inf), no torch.func
    transform active, no torch.compile tracing, no autocast. The same forward and backward
    (bit for bit), in the ctx style, whose call costs fewer microseconds than the setup_context
    style (no intermediates returned as outputs, no non-differentiable marking, no jvp/vmap
    plumbing); a double backward (create_graph=True) takes `_backward_graph`'s ops."""

    @staticmethod
    def forward(ctx, x, beta, dims, red_shape, out_shape, log_n):
        cdtype = compute_dtype(x.dtype)
        shift = _shift(torch.amax(x, dims, keepdim=True), cdtype)  # (..., 1, ...)
        z = torch.sub(x, shift)  # (..., n, ...) x - m <= 0
        if beta != 1.0:
            z.mul_(beta)  # z = beta (x - m) (docs/math.md (1a))
        s = z.exp_().sum(dims, keepdim=True)  # (..., 1, ...) in [1, n]
        del z
        r = torch.log(s)
        if log_n is not None:
            r.sub_(log_n)  # nu - log(n)/beta, before the division by beta
        nu = torch.add(shift.view(out_shape), r.view(out_shape), alpha=1.0 / beta)  # (1a)
        s.clamp_min_(1.0)  # an all -inf slice: exp(z) = 0 there, gradient 0 not 0/0
        ctx.save_for_backward(x, shift, s)
        ctx.beta, ctx.dims, ctx.cdtype, ctx.red_shape, ctx.out_shape = \
            beta, dims, cdtype, red_shape, out_shape
        ctx.x_dtype, ctx.log_n = x.dtype, log_n
        return nu if nu.dtype == x.dtype else nu.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, shift, s = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the differentiable ops
            return _backward_graph(_GraphCtx(ctx, x, shift, s), g)[0], None, None, None, \
                None, None
        g = g.reshape(ctx.red_shape)
        if g.dtype != ctx.cdtype:
            g = g.to(ctx.cdtype)
        z = torch.sub(x, shift)
        if ctx.beta != 1.0:
            z.mul_(ctx.beta)  # as in the forward
        gx = z.exp_().mul_(torch.div(g, s))  # softmax(beta x) * g  (docs/math.md (1c))
        return (gx if gx.dtype == ctx.x_dtype else gx.to(ctx.x_dtype)), None, None, None, \
            None, None


class _GraphCtx:
    """_SmoothMaxEager's ctx as `_backward_graph` reads a _SmoothMax ctx (scalar beta)."""

    def __init__(self, ctx, x, shift, s):
        self.saved_tensors = (x, shift, s, None, None, None, None)
        self.dims, self.cdtype, self.red_shape = ctx.dims, ctx.cdtype, ctx.red_shape
        self.x_dtype, self.log_n, self.beta_c = ctx.x_dtype, ctx.log_n, ctx.beta
        self.mode, self.needs_input_grad = "finite", (True, False)


def _eager(x: torch.Tensor) -> bool:
    """The fast path applies: no torch.func transform, no forward-mode AD level (dual
    tensors), no compile tracing, no autocast."""
    return x.device.type in amp.DEVICES and not (
        torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling()
        or forward_ad._current_level >= 0 or torch.is_autocast_enabled(x.device.type))


def _jvp(ctx, tx, tbeta):
    """Forward mode, the transpose of `_backward`: d nu = sum_i p_i tx_i + (d nu / d beta) tbeta
    with p = softmax(beta x) over the reduced dims (docs/math.md (1c)), the argmax weights
    (ties shared) at beta = inf, and d nu / d beta from `dnu_dbeta`."""
    dims, cdtype = ctx.dims, ctx.cdtype
    if ctx.mode == "inf":
        (x,) = ctx.saved_tensors
        if tx is None:
            return None
        w = _argmax_weights(x, torch.amax(x, dims, keepdim=True), dims, cdtype)
        return (w * tx.to(cdtype)).sum(dims, keepdim=True).reshape(ctx.out_shape).to(x.dtype)
    x, shift, s, beta_c, m, inf_mask, _ = ctx.saved_tensors
    b = beta_c if beta_c is not None else ctx.beta_c
    p = torch.exp((x.to(cdtype) - shift) * b) / s  # (..., n, ...) softmax(beta x)
    t = torch.zeros(ctx.red_shape, dtype=cdtype, device=x.device)
    if tx is not None:
        t = (p * tx.to(cdtype)).sum(dims, keepdim=True)
        if inf_mask is not None:
            w = _argmax_weights(x, m, dims, cdtype)
            t = torch.where(inf_mask, (w * tx.to(cdtype)).sum(dims, keepdim=True), t)
    if tbeta is not None:
        dbeta = dnu_dbeta(x, shift, s, b, dims, cdtype, ctx.log_n, ctx.valid)
        if inf_mask is not None:
            dbeta = dbeta.masked_fill(inf_mask, 0.0)
        t = t + dbeta * tbeta.to(cdtype)
    return t.reshape(ctx.out_shape).to(x.dtype)


def _backward(ctx, g):
    """The gradients of _SmoothMax (docs/math.md (1c)). g: the gradient of nu."""
    dims, cdtype, red_shape = ctx.dims, ctx.cdtype, ctx.red_shape
    need_x, need_beta = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    g = g.reshape(red_shape)  # (..., 1, ...)
    if g.dtype != cdtype:
        g = g.to(cdtype)

    if ctx.mode == "inf":
        (x,) = ctx.saved_tensors
        m = torch.amax(x, dims, keepdim=True)  # (..., 1, ...)
        # grad nu_inf = e_argmax, ties shared equally (docs/math.md (1c), limit)
        gx = _argmax_weights(x, m, dims, cdtype).mul_(g)
        return (gx if gx.dtype == ctx.x_dtype else gx.to(ctx.x_dtype)), None, *_NONES

    x, shift, s, beta_c, m, inf_mask, _ = ctx.saved_tensors
    beta = beta_c if beta_c is not None else ctx.beta_c

    gx = gbeta = None
    if not need_beta:
        z = torch.sub(x, shift)  # (..., n, ...) x - m, as in the forward
        if beta_c is not None and traced(beta_c):
            z = z * beta  # a batched beta (vmap): out of place
        elif beta_c is not None or beta != 1.0:
            z.mul_(beta)  # z = beta (x - m), bit-identical to the forward's
        # softmax(beta x) * g = exp(z) * (g / s)  (docs/math.md (1c); eq. 1b at beta = 1)
        gx = z.exp_().mul_(torch.div(g, s))  # (..., n, ...)
    else:
        # d nu / d beta (docs/math.md (1a) in beta; dnu_dbeta), for the caller's tensor beta
        dbeta = dnu_dbeta(x, shift, s, beta, dims, cdtype, ctx.log_n, ctx.valid)
        if inf_mask is not None:
            dbeta = dbeta.masked_fill(inf_mask, 0.0)  # nu_inf = max does not move with beta
        gbeta = (dbeta * g).sum_to_size(ctx.beta_shape).to(ctx.beta_dtype)
        if need_x:
            z = (x - shift) * beta  # as in the forward
            gx = z.exp_().mul_(torch.div(g, s))  # softmax(beta x) * g  (docs/math.md (1c))

    if need_x and inf_mask is not None:
        onehot = _argmax_weights(x, m, dims, cdtype).mul_(g)  # (docs/math.md (1c), limit)
        gx = torch.where(inf_mask, onehot, gx)
    if gx is not None and gx.dtype != ctx.x_dtype:
        gx = gx.to(ctx.x_dtype)
    return gx, gbeta, *_NONES


def _backward_graph(ctx, g):
    """The same gradients as `_backward`, in out-of-place differentiable ops of the saved
    input, beta and g, for create_graph=True: differentiated again they give the Hessian
    beta (diag(p) - p p^T), p = softmax(beta x) (docs/math.md (1d)), and the mixed derivatives
    in beta. At beta = inf the gradient e_argmax * g is constant in x (a zero Hessian)."""
    dims, cdtype, red_shape = ctx.dims, ctx.cdtype, ctx.red_shape
    g = g.reshape(red_shape).to(cdtype)  # (..., 1, ...)
    if ctx.mode == "inf":
        (x,) = ctx.saved_tensors
        xd = x.detach()
        w = _argmax_weights(xd, torch.amax(xd, dims, keepdim=True), dims, cdtype)
        return (w * g).to(ctx.x_dtype), None, *_NONES
    x, shift, _, _, m, inf_mask, beta_in = ctx.saved_tensors
    b = ctx.beta_c if beta_in is None else beta_in.to(cdtype)  # the caller's beta: it may train
    if inf_mask is not None:
        b = torch.where(inf_mask, torch.ones_like(b), b)  # the forward's finite stand-in
    d = x.to(cdtype) - shift  # (..., n, ...) x - m, m a constant
    # a -inf entry (max pooling's padding): z = -inf with no path to beta or x, since
    # 0 * (x - m) = 0 * -inf would make d z / d beta NaN
    out = torch.isneginf(d)
    z = torch.where(out, d, torch.where(out, torch.zeros_like(d), d) * b)  # beta (x - m)
    lse = torch.logsumexp(z, dims, keepdim=True)  # (..., 1, ...)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # an all -inf slice
    log_p = z - lse  # (..., n, ...) log softmax(beta x)  (docs/math.md (1c))
    p = torch.exp(log_p)
    gx = p * g if ctx.needs_input_grad[0] else None  # softmax(beta x) * g  (1c)
    gbeta = None
    if ctx.needs_input_grad[1]:
        # d nu / d beta = -H(p) / beta^2 (as in `_backward`); p log p is 0 where p is 0
        safe = torch.where(p > 0, log_p, torch.zeros_like(log_p))
        neg_h = (p * safe).sum(dims, keepdim=True)  # (..., 1, ...)
        if ctx.log_n is not None:
            neg_h = neg_h + ctx.log_n
        dbeta = neg_h / (b * b)
        if inf_mask is not None:
            dbeta = torch.where(inf_mask, torch.zeros_like(dbeta), dbeta)
        gbeta = (dbeta * g).sum_to_size(ctx.beta_shape).to(ctx.beta_dtype)
    if gx is not None and inf_mask is not None:
        onehot = _argmax_weights(x.detach(), m, dims, cdtype) * g  # (1c), limit
        gx = torch.where(inf_mask, onehot, gx)
    return (gx.to(ctx.x_dtype) if gx is not None else None), gbeta, *_NONES


def _check_input(x: torch.Tensor, owner: str) -> None:
    """A floating or integer x: bool and complex inputs are refused in one line."""
    if x.dtype is torch.bool or x.is_complex():
        raise TypeError(f"{owner}: expected a floating or integer input, got {x.dtype}")


def smooth_max(x: torch.Tensor, beta, dim=-1, keepdim: bool = False,
               normalized: bool = False, *, _counts=None) -> torch.Tensor:
    """nu_beta(x) = (1/beta) log sum_i exp(beta x_i) over `dim` (docs/math.md (1a)), stably.

    Args:
        x: a float64, float32, float16 or bfloat16 tensor (half types are computed in
            float32 inside and returned in their own dtype). An integer tensor is taken at
            beta = inf only (it is max, in x's dtype); bool and complex are refused.
        beta: the inverse temperature, in (0, inf]. A number, the string "inf" (or ".inf"),
            or a tensor broadcastable to x's shape with the reduced dims kept as 1 (say one
            beta per channel, shape (C, 1) for x of shape (B, C, n)); a tensor beta may
            require grad: d nu / d beta = (sum softmax(beta x) x - nu) / beta.
            beta = inf is max exactly (and so is any beta above the compute dtype's largest
            finite value); beta <= 0, NaN or below the compute dtype's smallest normal value
            raises ConfigError (a tensor beta is checked only outside torch.compile and
            torch.func transforms: there no value is looked at on the host).
        dim: the dimension (or tuple of dimensions) to reduce (an int or a tuple of ints).
        keepdim: keep the reduced dims as size 1.
        normalized: return nu_beta - log(n)/beta = (1/beta) log((1/n) sum exp(beta x_i)),
            which lies in [mean, max] and tends to the mean as beta -> 0 (n: the number of
            reduced entries). Formed as m + (r - log n)/beta, so it stays accurate at small
            beta up to the rounding of r (about eps log(n) / beta in absolute terms); its
            derivative in beta, KL(softmax || uniform) / beta^2, is formed around the mean at
            small beta (dnu_dbeta), so it keeps its relative accuracy down to beta ~ 1e-8.
        _counts: (pooling only) (log_n, valid): the number of entries per slice that count in
            n (log, broadcastable to the reduced shape) and their mask, for windows with
            padding, whose padded entries do not count.

    A slice with no entries gives -inf (as torch.logsumexp); beta gets no gradient there.
    Gradient: softmax(beta x) (docs/math.md (1c)); at beta = inf the argmax one-hot, ties shared
    equally. A -inf entry gets weight 0; an all -inf slice gives -inf and gradient 0; a NaN
    gives NaN; a +inf entry gives +inf, with a NaN gradient at the +inf entries and 0 at the
    others at finite beta (as torch.logsumexp).
    Double backward (create_graph=True) gives the Hessian beta (diag(p) - p p^T), p the
    softmax (docs/math.md (1d)); zero at beta = inf.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"smooth_max: x must be a tensor, got {type(x).__name__}")
    if has_torch_function_unary(x):  # lets torch function modes (dnnlab.opcount) see the call
        return handle_torch_function(smooth_max, (x,), x, beta, dim=dim, keepdim=keepdim,
                                     normalized=normalized, _counts=_counts)
    _check_input(x, "smooth_max")
    if x.dim() == 0:
        _dims(dim, 1)  # a 0-d input has the dims -1 and 0, as for torch's reductions
        x = x.reshape(1)  # a 0-d input is a slice of one
        return smooth_max(x, beta, 0, False, normalized).reshape(())
    dims = _dims(dim, x.dim())
    red_shape = torch.Size([1 if i in dims else n for i, n in enumerate(x.shape)])
    out_shape = red_shape if keepdim else torch.Size(
        [n for i, n in enumerate(x.shape) if i not in dims]
    )
    floating = x.is_floating_point()
    cdtype = compute_dtype(x.dtype) if floating else torch.float64
    if isinstance(beta, torch.Tensor):
        beta_c = _check_tensor_beta(beta, cdtype, red_shape)
        arg = beta
    else:
        value = beta if type(beta) is float else to_float(beta, "smooth_max: beta")
        beta_c = _check_scalar_beta(value, cdtype)
        arg = None
    if not floating:
        if arg is None and beta_c == math.inf:  # max of integers, in their dtype
            return torch.amax(x, dims, keepdim=keepdim)
        raise TypeError(f"smooth_max: an integer input ({x.dtype}) is taken at beta = inf "
                        "only; cast it to a floating dtype for a finite beta")
    if any(x.shape[d] == 0 for d in dims):  # no entries: -inf, as torch.logsumexp
        return torch.sum(x, dims, keepdim=keepdim) - math.inf
    if _counts is not None:
        log_n, valid = _counts
    else:
        log_n = math.log(math.prod([x.shape[d] for d in dims])) if normalized else None
        valid = None  # a list above: dynamo traces it
    if arg is None and beta_c != math.inf and valid is None and _eager(x):
        return _SmoothMaxEager.apply(x, beta_c, dims, red_shape, out_shape, log_n)
    return _apply_smooth_max(x, arg, beta_c, dims, red_shape, out_shape, log_n, valid)[0]
