"""The one plain-autograd reference for the smooth max (docs/math.md (1a)-(1c)).

    nu_beta(x) = (1/beta) log sum_i exp(beta x_i) = logsumexp(beta (x - c)) / beta + c

with c = max x a detached constant: the same function and gradient (softmax(beta x),
docs/math.md (1c)) as torch.logsumexp(beta x) / beta, but beta x unshifted would lose the
reference's accuracy where |beta x| >> 1/eps (with k maxima tied at 1.7e38 and beta x ~ 1e35,
log k is absorbed and each tied entry gets weight 1 instead of 1/k). At beta = inf it is
torch.amax, whose autograd shares the gradient equally among tied maxima. Everything runs in
x's own dtype through torch's autograd, so it checks dnnlab.smoothmax.functional.smooth_max
(used by dnnlab.smoothmax.limits, the training probes, the tests and the benchmarks).
"""
from __future__ import annotations

import math

import torch

__all__ = ["smooth_max_reference"]


def _numel(x: torch.Tensor, dim) -> int:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return math.prod(x.shape[d] for d in dims)


def smooth_max_reference(x: torch.Tensor, beta, dim=-1, normalized: bool = False):
    """nu_beta(x) over `dim` (an int or a tuple) through torch.logsumexp / torch.amax autograd.

    beta: a float in (0, inf] or a tensor broadcastable to x's shape with the reduced dims kept
    as 1 (entries may be inf, and beta may require grad). normalized subtracts log(n)/beta
    (n: the number of reduced entries). Returns the reduced shape (dims dropped), x's dtype.
    """
    c = torch.amax(x, dim, keepdim=True).detach()  # (..., 1, ...) a constant
    c = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)  # non-finite max: shift by 0
    log_n = math.log(_numel(x, dim)) if normalized else 0.0
    if not isinstance(beta, torch.Tensor):
        beta = float(beta)
        if math.isinf(beta):
            return torch.amax(x, dim)  # nu_inf = max x  (docs/math.md (1a), limit)
        lse = torch.logsumexp(beta * (x - c), dim, keepdim=True)  # (..., 1, ...)
        return _squeeze((lse - log_n) / beta + c, dim)  # (docs/math.md (1a))
    inf = torch.isinf(beta)  # (broadcastable to (..., 1, ...))
    b = beta.masked_fill(inf, 1.0)  # a finite stand-in where beta = inf, replaced below
    lse = torch.logsumexp(b * (x - c), dim, keepdim=True)  # (..., 1, ...)
    nu = (lse - log_n) / b + c  # (..., 1, ...)  (docs/math.md (1a))
    nu = torch.where(inf, torch.amax(x, dim, keepdim=True), nu)
    return _squeeze(nu, dim)


def _squeeze(t: torch.Tensor, dim) -> torch.Tensor:
    """Drop the kept reduced dims of t."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    keep = [n for i, n in enumerate(t.shape) if i not in {d % t.dim() for d in dims}]
    return t.reshape(keep)
