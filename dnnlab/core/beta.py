"""The one parser of inverse temperatures beta (docs/math.md (1a)): a number in (0, inf].

Configs and layers accept a number, or a string such as "inf", ".inf" (YAML's spelling) or
"1e-3"; tensors and lists (one beta per channel) are handled by the layers themselves.
"""
from __future__ import annotations

import math

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
