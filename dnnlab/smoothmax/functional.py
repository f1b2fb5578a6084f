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
The autograd Functions themselves live in `kernels.py`; this module checks the arguments and
chooses one.
"""
import math

import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from dnnlab.core.beta import check_beta, check_betas, to_float
from dnnlab.core.dtypes import compute_dtype
from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.smoothmax.kernels import _apply_smooth_max, _eager, _SmoothMaxEager, traced

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
    """beta in (0, inf] (core.beta's check); a beta above the compute dtype's largest finite
    value is inf, one below its smallest normal value is refused."""
    check_beta(beta, "smooth_max: beta")
    info = torch.finfo(cdtype)
    if beta < info.tiny:
        raise ConfigError(
            f"smooth_max: beta must be in (0, inf], got {beta}, which underflows {cdtype}"
        )
    # nu - max <= log(n)/beta (docs/math.md (1a)) is below any resolution there: exactly max.
    return math.inf if beta > info.max else beta


def _check_tensor_beta(beta: torch.Tensor, cdtype: torch.dtype, reduced: torch.Size):
    """A tensor beta cast to the compute dtype: floating, broadcastable to `reduced`, and its
    entries in (0, inf] as core.beta.check_betas says (shape checks and op counting run on
    meta tensors, which have no values to check)."""
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
    if not traced(b):  # a traced or transformed beta has no values: checked where it is built
        check_betas(beta, "smooth_max: beta", dtype=cdtype)  # nonpositive, NaN, underflowing
    return b


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
