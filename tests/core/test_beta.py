"""dnnlab.core.beta: the one parser of a temperature (numbers, "inf" spellings), refusing with
the key."""
from __future__ import annotations

import math

import pytest

from dnnlab.core import beta as betas
from dnnlab.core.errors import ConfigError


@pytest.mark.parametrize("value, expect", [(2, 2.0), ("1e-3", 1e-3), ("inf", math.inf),
                                           (".inf", math.inf), (" +.INF ", math.inf), (0.5, 0.5)])
def test_parse_beta_accepts(value, expect):
    assert betas.parse_beta(value) == expect


@pytest.mark.parametrize("value", [0, -1, "nan", "abc", True, None, [1]])
def test_parse_beta_rejects_with_the_key(value):
    with pytest.raises(ConfigError, match=r"^model\.pool\.beta="):
        betas.parse_beta(value, "model.pool.beta")


def test_parse_beta_finite_only():
    with pytest.raises(ConfigError, match="finite"):
        betas.parse_beta("inf", "beta.max", allow_inf=False)
