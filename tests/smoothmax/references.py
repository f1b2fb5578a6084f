"""References for the smooth-max tests, written from plain torch in float64 only (never a
dnnlab path): a per-window torch.logsumexp over the valid entries of each window, and the
derivative in beta of the normalized form to 60 digits with mpmath."""
from __future__ import annotations

import math

import mpmath
import torch
import torch.nn.functional as F


def out_len(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """The number of windows along a dim of size n, as torch's own max pooling gives it (its
    output shape on a meta tensor: nothing allocated, no formula written again here)."""
    x = torch.empty(1, 1, n, 1, device="meta")
    return F.max_pool2d(x, (k, 1), (s, 1), (p, 0), (d, 1), ceil_mode).shape[2]


def pool_reference(x: torch.Tensor, beta, kernel, stride, padding, dilation, ceil_mode,
                   normalized: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, Ho, Wo): each window's valid entries (in the input, not in the
    padding) gathered by index and reduced with torch.logsumexp(beta v) / beta (minus
    log(n_valid) / beta when normalized), or torch.amax at beta = inf; beta a float or one per
    channel. Differentiable through torch's autograd; computed in x's dtype."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    h, w = x.shape[-2:]
    ho, wo = out_len(h, kh, sh, ph, dh, ceil_mode), out_len(w, kw, sw, pw, dw, ceil_mode)
    c = x.shape[1]
    betas = [float(b) for b in beta] if isinstance(beta, (list, tuple)) else [float(beta)] * c
    rows = []
    for i in range(ho):
        cols = []
        for j in range(wo):
            hs = [i * sh - ph + a * dh for a in range(kh)]
            ws = [j * sw - pw + b * dw for b in range(kw)]
            hs = [r for r in hs if 0 <= r < h]
            ws = [q for q in ws if 0 <= q < w]
            v = x[:, :, hs][:, :, :, ws].flatten(2)  # (B, C, n_valid)
            per_c = []
            for ch in range(c):
                vc, b = v[:, ch], betas[ch]
                if math.isinf(b):
                    per_c.append(torch.amax(vc, -1))
                else:
                    m = torch.amax(vc, -1, keepdim=True).detach()
                    m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
                    lse = torch.logsumexp(b * (vc - m), -1)
                    if normalized:
                        lse = lse - math.log(vc.shape[-1])
                    per_c.append(lse / b + m[:, 0])
            cols.append(torch.stack(per_c, 1))  # (B, C)
        rows.append(torch.stack(cols, -1))  # (B, C, Wo)
    return torch.stack(rows, -2)  # (B, C, Ho, Wo)


def dnu_dbeta_mp(values, beta: float, normalized: bool, dps: int = 60) -> float:
    """d/d beta of (1/beta) log(sum exp(beta x)) [- log(n)/beta], to `dps` digits: the
    closed form (sum p x - nu) / beta with nu and p = softmax(beta x) in mpmath."""
    with mpmath.workdps(dps):
        xs = [mpmath.mpf(float(v)) for v in values]
        b = mpmath.mpf(beta)
        m = max(xs)
        e = [mpmath.exp(b * (v - m)) for v in xs]
        s = mpmath.fsum(e)
        nu = m + mpmath.log(s) / b
        if normalized:
            nu -= mpmath.log(len(xs)) / b
        px = mpmath.fsum(ei * v for ei, v in zip(e, xs)) / s  # sum p x
        # d nu / d beta = (sum p x - nu) / beta, for both forms (-log(n)/beta is in nu)
        return float((px - nu) / b)


def lse_reference(x: torch.Tensor, beta, dims, normalized: bool = False) -> torch.Tensor:
    """nu_beta over `dims` (dropped) through torch.logsumexp's autograd, shifted by the
    detached max; beta a float (inf: torch.amax) or a tensor broadcastable to the reduced shape
    with the dims kept (inf entries: torch.amax there)."""
    n = math.prod(x.shape[d] for d in dims)
    if n == 0:
        return torch.logsumexp(x, dims)  # -inf: no entries
    m = torch.amax(x, dims, keepdim=True).detach()
    m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    log_n = math.log(n) if normalized and n else 0.0
    if not isinstance(beta, torch.Tensor):
        if math.isinf(beta):
            return torch.amax(x, dims)
        return ((torch.logsumexp(beta * (x - m), dims, keepdim=True) - log_n) / beta
                + m).squeeze(dims)
    inf = torch.isinf(beta)
    b = torch.where(inf, torch.ones_like(beta), beta)
    # the slices at beta = inf read zeros in the logsumexp branch: torch.where's unselected
    # branch still backpropagates 0 * its own gradient, which is NaN for a +inf entry
    d = torch.where(inf, torch.zeros_like(x), x - m)
    nu = (torch.logsumexp(b * d, dims, keepdim=True) - log_n) / b + m
    return torch.where(inf, torch.amax(x, dims, keepdim=True), nu).squeeze(dims)
