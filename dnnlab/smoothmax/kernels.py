"""The autograd Functions behind smooth_max and the pooling layers: the kernels.

`_SmoothMax` computes nu_beta(x) = (1/beta) log sum_i exp(beta x_i) over any dims for every
case (tensor beta, beta = inf, torch.func transforms, torch.compile, autocast), with its
backward, double backward and forward mode (docs/math.md (1a)-(1d)); `_SmoothMaxEager` is its
fast path for plain tensors and a float beta. For pooling on non-overlapping windows:
`_WindowSmoothMax` (finite scalar beta), `_WindowMax` (beta = inf) and `_GlobalMax` (global
pooling at beta = inf, through the C++ kernel of `native.py` when it takes the input). The
public layers (`modules.py`) and `smooth_max` (`functional.py`) check the arguments and choose
one of these; nothing here parses beta.
"""
import math

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from dnnlab.core import amp
from dnnlab.core.dtypes import compute_dtype
from dnnlab.smoothmax import native


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
    (bit for bit), in the ctx style, whose call costs less than the setup_context
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



def _up(t: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """(B, C, Ho, Wo) -> (B, C, Ho*kh, Wo*kw): each window's value over its window."""
    b, c, ho, wo = t.shape
    return t[:, :, :, None, :, None].expand(b, c, ho, kh, wo, kw).reshape(b, c, ho * kh, wo * kw)


class _WindowSmoothMax(torch.autograd.Function):
    """nu_beta over non-overlapping kh x kw windows for a finite scalar beta > 0, computed on
    contiguous 4-d tensors (max_pool2d, avg_pool2d, a broadcast of each window's value) instead
    of reductions over strided window views. Same values and gradients as smooth_max:
    nu = m + (1/beta) log sum exp(beta (x - m)) (docs/math.md (1a), shifted by the window max
    m); grad = softmax(beta x) over the window (docs/math.md (1c)). beta = inf is _WindowMax.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel, beta, normalized):  # x: (B, C, H, W) -> (nu, shift, s)
        (kh, kw), (h, w) = kernel, x.shape[2:]
        ho, wo = h // kh, w // kw
        cd = compute_dtype(x.dtype)
        xc = x[:, :, :ho * kh, :wo * kw].to(cd)  # (B, C, Ho*kh, Wo*kw), windows that fit
        m = F.max_pool2d(xc, (kh, kw))  # (B, C, Ho, Wo) the window max (NaN propagates)
        # as in smooth_max (functional._shift): +inf -> +inf with gradient 0 at the finite
        # entries, all -inf -> -inf, NaN -> NaN
        shift = _shift(m, cd)  # (B, C, Ho, Wo)
        e = (xc - _up(shift, kh, kw)).mul_(beta).exp_()  # exp(beta (x - m)) <= 1  (1a)
        s = F.avg_pool2d(e, (kh, kw)).mul_(kh * kw)  # (B, C, Ho, Wo) sum over each window
        r = torch.log(s)  # in [0, log n]
        if normalized:
            r.sub_(math.log(kh * kw))  # nu - log(n)/beta, formed before dividing by beta
        nu = torch.add(shift, r, alpha=1.0 / beta)  # nu = m + r / beta  (docs/math.md (1a))
        s.clamp_min_(1.0)  # an all -inf window: exp(z) = 0 there, so the gradient is 0, not 0/0
        return nu.to(x.dtype), shift, s  # shift, s: intermediates for the backward

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, kernel, beta, _ = inputs
        _, shift, s = output
        ctx.mark_non_differentiable(shift, s)
        ctx.shape, ctx.kernel, ctx.beta, ctx.x_dtype = x.shape, kernel, beta, x.dtype
        ctx.save_for_backward(x, shift, s)  # x, not xc: a double backward differentiates it
        ctx.save_for_forward(x, shift, s)

    @staticmethod
    def jvp(ctx, tx, *_):
        """sum over each window of softmax(beta x) * tx: the transpose of the backward."""
        (kh, kw), beta = ctx.kernel, ctx.beta
        x, shift, s = ctx.saved_tensors
        ho, wo = shift.shape[2:]
        xc = x[:, :, :ho * kh, :wo * kw].to(s.dtype)
        p = torch.exp((xc - _up(shift, kh, kw)) * beta) / _up(s, kh, kw)  # softmax per window
        t = F.avg_pool2d(p * tx[:, :, :ho * kh, :wo * kw].to(s.dtype), (kh, kw)) * (kh * kw)
        return t.to(ctx.x_dtype), None, None

    @staticmethod
    def backward(ctx, g, *_):  # g: (B, C, Ho, Wo)
        (kh, kw), (h, w), beta = ctx.kernel, ctx.shape[2:], ctx.beta
        x, shift, s = ctx.saved_tensors
        xc = x[:, :, :shift.shape[2] * kh, :shift.shape[3] * kw].to(s.dtype)  # as in forward
        if torch.is_grad_enabled():  # create_graph=True: s formed again from x, out of place,
            # so that this gradient's own derivative is the Hessian (docs/math.md (1d))
            e = torch.exp((xc - _up(shift, kh, kw)) * beta)
            s = F.avg_pool2d(e, (kh, kw)) * (kh * kw)  # in [1, n], 0 for an all -inf window:
            s = torch.where(s > 0, s, 1.0)  # not clamp_min(1): its gradient is 0 at s = 1
            gx = e * _up(g.to(xc.dtype) / s, kh, kw)
        else:
            e = (xc - _up(shift, kh, kw)).mul_(beta).exp_()  # as in the forward
            gx = e.mul_(_up(g.to(xc.dtype) / s, kh, kw))  # softmax(beta x) * g  (1c)
        gx = gx.to(ctx.x_dtype)
        if gx.shape[2] != h or gx.shape[3] != w:  # rows/columns no window covers: gradient 0
            gx = F.pad(gx, (0, w - gx.shape[3], 0, h - gx.shape[2]))
        return gx, None, None, None


_apply_window_smooth_max = amp.applier(_WindowSmoothMax, torch.float32)


def _widen(t: torch.Tensor, kw: int) -> torch.Tensor:
    """(B, C, Ho, Wo) -> (B, C, Ho, Wo*kw): each window's value repeated along its kw columns.
    Written as kw strided copies of t, one per column of the windows: a copy from an expanded
    view would run inner loops only kw long, which is slower on CPU (benchmarks/train.py
    times the pooling)."""
    if kw == 1:
        return t
    b, c, ho, wo = t.shape
    out = t.new_empty((b, c, ho, wo, kw))
    for j in range(kw):  # select, not unbind: see _WindowMax
        out.select(4, j).copy_(t)
    return out.view(b, c, ho, wo * kw)


class _WindowMax(torch.autograd.Function):
    """Max pooling over non-overlapping kh x kw windows (nu_inf = max, docs/math.md (1a), limit)
    whose gradient is the argmax one-hot with tied maxima sharing it equally: the limit of
    softmax(beta x) (docs/math.md (1c)).

    Built from elementwise ops on the windows' rows (views of x, contiguous along W), with no
    full-size temporary but the gradient itself: the forward takes the max of the kh rows, then
    of the kw columns (torch.maximum, NaN propagating like max_pool2d); the backward marks each
    entry equal to its window's max with torch.eq into a float tensor (1.0 or 0.0) that then
    becomes the gradient, so the tie count is an exact sum and a maximum's gradient is
    g / count, bit for bit the mean of g over a mask of the maxima
    (tests/smoothmax/test_kernels.py). No indices are kept. On CPU this is faster than
    max_pool2d's own kernel (docs/smoothmax.md, "Max pooling with shared ties"). At small
    sizes the step is bound by per-op overhead (each Python-level op, view and keyword argument
    is a visible share of a small step), hence unbind for the views read and
    positional arguments; views written in place come from select, which, unlike unbind's,
    may be written with grad mode on (backward with create_graph=True).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel):  # x: (B, C, H, W)
        kh, kw = kernel
        h, w = x.shape[2:]
        ho, wo = h // kh, w // kw
        xc = x if h == ho * kh and w == wo * kw else x[:, :, :ho * kh, :wo * kw]
        rows = xc.unflatten(2, (ho, kh)).unbind(3)  # kh views (B, C, Ho, Wo*kw)
        col = rows[0]  # (B, C, Ho, Wo*kw): each window column's max
        for r in rows[1:]:
            col = torch.maximum(col, r)
        cols = col.unflatten(3, (wo, kw)).unbind(4)  # kw views (B, C, Ho, Wo)
        m = cols[0]  # (B, C, Ho, Wo): each window's max
        for cj in cols[1:]:
            m = torch.maximum(m, cj)
        if kh * kw == 1:
            m = m.clone()  # a 1x1 window: the max is x itself, not a view of it
        # the backward keeps a copy (Ho x Wo, a (kh kw)-th of x): an in-place op on the
        # output, as ReLU(inplace=True) after the pooling, must not change it
        return m, m.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, kernel = inputs
        _, kept = output
        ctx.mark_non_differentiable(kept)
        ctx.kernel = kernel
        ctx.save_for_backward(x, kept)
        ctx.save_for_forward(x, kept)

    @staticmethod
    def jvp(ctx, tx, _):
        """sum over each window of the backward's weights (ties shared) times tx."""
        (kh, kw), x, m = ctx.kernel, *ctx.saved_tensors
        cd = compute_dtype(x.dtype)
        ho, wo = m.shape[2:]
        w = _WindowMax._traced_backward(x, m.to(cd), torch.ones_like(m, dtype=cd), kh, kw, cd)
        t = (w.to(cd) * tx.to(cd))[:, :, :ho * kh, :wo * kw]
        return (F.avg_pool2d(t, (kh, kw)) * (kh * kw)).to(x.dtype), None

    @staticmethod
    def backward(ctx, g, _g_kept=None):  # g: (B, C, Ho, Wo)
        (kh, kw), x, m = ctx.kernel, *ctx.saved_tensors
        xd = x.dtype
        cd = compute_dtype(xd)
        if m.dtype is not cd:  # float16/bfloat16: the float32 gradient (compute_dtype)
            m = m.to(cd)
        if g.dtype is not cd:
            g = g.to(cd)
        if torch.compiler.is_compiling():  # no out= into views, no host sync: one graph
            return _WindowMax._traced_backward(x, m, g, kh, kw, cd), None
        h, w = x.shape[2:]
        b, c, ho, wo = m.shape
        fits = h == ho * kh and w == wo * kw
        # becomes the gradient: x's shape and layout when the windows tile x
        gx = (torch.empty_like(x, dtype=cd) if fits
              else m.new_empty((b, c, ho * kh, wo * kw)))
        gx5 = gx.unflatten(2, (ho, kh))  # (B, C, Ho, kh, Wo*kw), a view
        ind = [gx5.select(3, i) for i in range(kh)]  # its rows
        xc = x if fits else x[:, :, :ho * kh, :wo * kw]
        mw = _widen(m, kw)  # (B, C, Ho, Wo*kw); one op per window row is faster than one
        for xr, ir in zip(xc.unflatten(2, (ho, kh)).unbind(3), ind):  # broadcast over the
            torch.eq(xr, mw, out=ir)  # rows: 1.0 where x is its window's max, else 0.0
        col = ind[0] if kh == 1 else ind[0] + ind[1]
        for ir in ind[2:]:  # (B, C, Ho, Wo*kw): maxima per window column
            col.add_(ir)
        cols = col.unflatten(3, (wo, kw)).unbind(4)
        count = cols[0].clone() if kw == 1 else cols[0] + cols[1]
        for cj in cols[2:]:  # (B, C, Ho, Wo): maxima per window, an exact integer
            count.add_(cj)
        if m.numel() and not bool(m.amin() > -math.inf):  # some max is -inf or NaN (amin
            count.clamp_min_(1.0)  # propagates NaN): a NaN window has no max, 0 not 0/0, and an
            gq = torch.where(m > -math.inf, g / count, 0.0)  # all -inf window gradient 0
        else:
            gq = g / count  # ties share g; a finite max equals itself, so count >= 1
        gw = _widen(gq, kw)
        for i in range(kh):  # fresh views: with create_graph=True each mul_ rebases gx
            gx5.select(3, i).mul_(gw)  # g / count on each maximum, 0 elsewhere
        if not fits:  # rows or columns no window covers: gradient 0
            gx = F.pad(gx, (0, w - wo * kw, 0, h - ho * kh))
        return (gx if xd is cd else gx.to(xd)), None


    @staticmethod
    def _traced_backward(x, m, g, kh: int, kw: int, cd: torch.dtype) -> torch.Tensor:
        """The backward above as torch.compile traces it: the same values bit for bit (exact
        integer counts, g / count, 0.0 or 1.0 times it), out of whole-tensor ops; every window
        goes through the -inf/NaN form, which equals the plain one for a finite max."""
        h, w = x.shape[2:]
        b, c, ho, wo = m.shape
        x5 = x[:, :, :ho * kh, :wo * kw].unflatten(2, (ho, kh))  # (B, C, Ho, kh, Wo*kw)
        ind = torch.eq(x5, _widen_traced(m, kw).unsqueeze(3)).to(cd)  # 1.0 on each maximum
        count = ind.sum(3).unflatten(3, (wo, kw)).sum(4)  # (B, C, Ho, Wo), exact
        gq = torch.where(m > -math.inf, g / count.clamp_min(1.0), 0.0)
        gx = (ind * _widen_traced(gq, kw).unsqueeze(3)).flatten(2, 3)  # (B, C, Ho*kh, Wo*kw)
        if gx.shape[2] != h or gx.shape[3] != w:  # rows/columns no window covers: gradient 0
            gx = F.pad(gx, (0, w - wo * kw, 0, h - ho * kh))
        return gx.to(x.dtype)


# max pooling runs in its input's dtype under autocast, as nn.MaxPool2d (no cast)
_apply_window_max = amp.applier(_WindowMax, None)


def _window_max(x: torch.Tensor, kernel) -> torch.Tensor:
    return _apply_window_max(x, kernel)[0]


def _widen_traced(t: torch.Tensor, kw: int) -> torch.Tensor:
    """_widen for torch.compile: (B, C, Ho, Wo) -> (B, C, Ho, Wo*kw) from an expanded view."""
    b, c, ho, wo = t.shape
    return t.unsqueeze(4).expand(b, c, ho, wo, kw).reshape(b, c, ho, wo * kw)


def _native(x: torch.Tensor):
    """The C++ kernel (dnnlab.smoothmax.native) when it takes x, else None: a contiguous
    float32/float64 CPU tensor of at most native.MAX_ENTRIES entries (larger ones are faster
    through torch's vectorized, multi-threaded ops), outside torch.compile's tracing."""
    if (x.dtype is torch.float32 or x.dtype is torch.float64) and x.device.type == "cpu" \
            and 0 < x.numel() <= native.MAX_ENTRIES and x.is_contiguous() \
            and not torch.compiler.is_compiling():
        return native.kernels()
    return None


class _GlobalMax(torch.autograd.Function):
    """Global pooling at beta = inf: max over (H, W), ties sharing the gradient
    (docs/math.md (1c)); the backward as in _WindowMax, one window per plane.

    A plane whose max is -inf (all -inf) or NaN gets gradient 0 (0 * g): its max is compared
    as NaN, which equals nothing, so it has no maxima and its count (0) is clamped to 1, with no
    check and no host sync.

    Small contiguous float32/float64 CPU inputs go through the C++ kernel (global_max.cpp,
    see _native): the max and the tie count of each plane in one pass, the gradient in another;
    the same values, bit for bit. At such sizes (the benchmark's 64x64x4x4, 65k entries) the
    torch ops below are bound by per-op overhead, which no arrangement of them removed
    (docs/train.md). Otherwise the forward forms the mask and the counts when a gradient is
    wanted, which leaves the backward two ops: it scales the mask in place into the gradient
    and drops it; a second backward (retain_graph=True), or a backward of the kernel's forward
    with create_graph=True, forms it again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, grad):  # (B, C, H, W) -> (max (B, C, 1, 1), ties per plane or empty)
        k = _native(x)
        if k is not None:
            res = k.forward(x, grad)  # max (B, C, 1, 1) [, ties per plane]
            return res[0], (res[1] if grad else res[0].new_empty((0,)))
        out = x.amax((2, 3), True)
        return out, out.new_empty((0,))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, grad = inputs
        out, count = output
        ctx.mark_non_differentiable(count)
        ctx.native = count.numel() > 0
        ctx.x_dtype = x.dtype
        ctx.save_for_forward(x, out.clone())
        if not ctx.needs_input_grad[0]:
            return
        if ctx.native:  # a copy of the output: an in-place op on it (ReLU) must not change it
            ctx.save_for_backward(x, out.clone(), count)
            return
        ctx.ref = _GlobalMax._ref(out)
        ctx.ind, ctx.count = _GlobalMax._mask_count(x, ctx.ref)
        ctx.save_for_backward(x)  # for a second backward only

    @staticmethod
    def jvp(ctx, tx, _):
        """The tangent at each plane's maxima, ties shared: the transpose of the backward."""
        x, out = ctx.saved_tensors
        ind, count = _GlobalMax._mask_count(x, _GlobalMax._ref(out))
        t = (ind * tx.to(ind.dtype)).sum((2, 3), True) / count
        return t.to(x.dtype), None

    @staticmethod
    def apply_to(x: torch.Tensor) -> torch.Tensor:
        """The pooled max; the kernel counts ties in its forward only when a gradient is
        wanted."""
        grad = torch.is_grad_enabled() and x.requires_grad
        return _apply_global_max(x, grad)[0]

    @staticmethod
    def _ref(out: torch.Tensor) -> torch.Tensor:
        return out.nan_to_num(math.nan, math.inf, math.nan)  # -inf -> NaN, others kept

    @staticmethod
    def _mask_count(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask (_mask) and the ties per plane, an exact integer; 1 where the plane has no
        max."""
        ind = _GlobalMax._mask(x, ref)
        return ind, ind.sum((2, 3), True).clamp_min_(1.0)

    @staticmethod
    def _mask(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """1.0 where x equals its plane's ref, else 0.0, in the compute dtype (a new tensor)."""
        if x.dtype is torch.float32 or x.dtype is torch.float64:
            return torch.eq(x, ref, out=torch.empty_like(x))
        return torch.eq(x, ref, out=torch.empty_like(x, dtype=compute_dtype(x.dtype)))

    @staticmethod
    def backward(ctx, g, _g_count=None):
        if ctx.native:
            x, out, count = ctx.saved_tensors
            if g.dtype is not x.dtype:
                g = g.to(x.dtype)
            if not torch.is_grad_enabled():  # create_graph=True needs the torch ops
                return native.kernels().backward(x, out, count, g), None
            ind, count = _GlobalMax._mask_count(x, _GlobalMax._ref(out))
            return ind.mul_(g / count), None
        ind, ctx.ind = ctx.ind, None  # attributes outlive the backward: drop the mask now
        if ind is None:  # a second backward: the first made its mask the gradient
            ind = _GlobalMax._mask(ctx.saved_tensors[0], ctx.ref)
        gx = ind.mul_((g if g.dtype is ind.dtype else g.to(ind.dtype)) / ctx.count)
        return (gx if ctx.x_dtype is ind.dtype else gx.to(ctx.x_dtype)), None


_apply_global_max = amp.applier(_GlobalMax, None)  # in the input's dtype, as max pooling
