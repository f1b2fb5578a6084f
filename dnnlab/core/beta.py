"""The one parser of inverse temperatures beta (docs/math.md (1a)): a number in (0, inf].

Configs and layers accept a number, or a string such as "inf", ".inf" (YAML's spelling) or
"1e-3" (`parse_beta`); layers also a list or tensor, one beta per channel (`parse_betas`);
`smooth_max` checks a number it is given with `check_beta` and a tensor with `check_betas`.
Which compute dtype a beta meets is the kernel's question (dnnlab.smoothmax.functional): it
passes that dtype to `check_betas`, and refuses a number that underflows it itself.
"""
from __future__ import annotations

import math

import torch

from dnnlab.core.errors import ConfigError

INF = math.inf


def to_float(beta, key: str = "beta") -> float:
    """A Python number or a string ("inf", ".inf", "2.5") as a float; no range check."""
    if isinstance(beta, str):
        s = beta.strip().lower()
        s = {".inf": "inf", "+.inf": "inf"}.get(s, s)  # YAML spelling of infinity
        try:
            return float(s)
        except ValueError:
            raise ConfigError(f"{key}={beta!r}: expected a number or 'inf'") from None
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ConfigError(f"{key}={beta!r}: expected a number or 'inf'")
    return float(beta)


def parse_beta(beta, key: str = "beta", allow_inf: bool = True) -> float:
    """beta as a float in (0, inf] ((0, inf) if not allow_inf); ConfigError naming `key`."""
    value = to_float(beta, key)
    if math.isnan(value) or value <= 0 or (value == INF and not allow_inf):
        what = "a number in (0, inf]" if allow_inf else "a finite number > 0"
        raise ConfigError(f"{key}={beta!r}: expected {what}")
    return value


def check_beta(value: float, key: str = "beta") -> float:
    """A float beta in (0, inf], else ConfigError "{key} must be in (0, inf], got {value}"."""
    if math.isnan(value) or value <= 0:
        raise ConfigError(f"{key} must be in (0, inf], got {value}")
    return value


def check_betas(beta: torch.Tensor, key: str = "beta", dtype: torch.dtype | None = None):
    """A floating tensor of betas, each entry in (0, inf], else ConfigError "{key} must be in
    (0, inf], got a tensor with entry {first bad entry} (shape ...)". With `dtype` (the dtype
    beta is computed in), an entry below that dtype's smallest normal value once cast to it is
    refused too: it would be 0 or lose its precision there. A meta tensor has no values and
    passes; the caller checks its dtype and shape."""
    if beta.is_meta:
        return beta
    b = beta.detach()
    cast = b if dtype is None else b.to(dtype)
    bad = torch.isnan(cast) | (cast <= 0)
    if dtype is not None:
        bad |= cast < torch.finfo(dtype).tiny
    if bool(bad.any()):
        raise ConfigError(f"{key} must be in (0, inf], got a tensor with entry "
                          f"{b[bad][0].item()} (shape {tuple(b.shape)})")
    return beta


def parse_betas(beta, key: str = "beta"):
    """A float (maybe inf) for a number or a string ("inf", ".inf", "2.0"); a float tensor for a
    list or tensor (one beta per channel, say). Raises ConfigError on a value outside (0, inf].
    A floating tensor that requires grad is the caller's to train: it is returned itself."""
    if isinstance(beta, (list, tuple)):
        beta = torch.tensor([to_float(b, key) for b in beta], dtype=torch.float32)
    if isinstance(beta, torch.Tensor):
        kept = beta
        beta = beta.detach().clone()
        beta = beta if beta.is_floating_point() else beta.float()
        check_betas(beta, key)
        return kept if kept.requires_grad and kept.is_floating_point() else beta
    return parse_beta(to_float(beta, key), key)  # the float's repr in the message: 0 -> 0.0


# Where beta = inf sits on a numeric log10(beta) axis (W&B config, summary and sweep tables,
# whose charts cannot place infinity): beta = 1e6, where the gradient of nu_beta, softmax(beta
# x), is the argmax one-hot to about 1e-20 on the inputs of docs/math.md's check (1c). A finite
# beta of 1e6 or more shares the place; the text value ("inf") says which it is.
LOG10_BETA_INF = 6.0


def log10_beta(beta) -> float | None:
    """log10(beta) for a W&B axis: a number; LOG10_BETA_INF for inf (a float or "inf"); None
    for anything that is not one temperature ("learnable", a per-channel list, None)."""
    try:
        value = to_float(beta)
    except ConfigError:
        return None
    if math.isnan(value) or value <= 0:
        return None
    return LOG10_BETA_INF if value == INF else min(math.log10(value), LOG10_BETA_INF)


# beta as one float type for W&B's config and summary (JSON holds no infinity): inf is stored
# as 10 ** LOG10_BETA_INF, the place log10_beta gives it; results.json keeps "inf" itself.
BETA_INF_FLOAT = 10.0 ** LOG10_BETA_INF


def beta_float(beta):
    """beta as a float for W&B: a number as is, inf as BETA_INF_FLOAT; anything that is not
    one temperature ("learnable", a list, None) as it is."""
    try:
        value = to_float(beta)
    except ConfigError:
        return beta
    return BETA_INF_FLOAT if value == INF else value
