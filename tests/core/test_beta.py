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


def test_parse_betas_one_per_channel():
    """Lists and tensors (the layers' per-channel betas) go through the same parser."""
    import torch

    got = betas.parse_betas(["inf", 2, ".inf"], "SmoothMaxPool2d: beta")
    assert got.dtype is torch.float32 and got.tolist() == [math.inf, 2.0, math.inf]
    assert betas.parse_betas(torch.tensor([3])).tolist() == [3.0]  # an int tensor as floats
    trained = torch.tensor([1.5, 2.0], dtype=torch.float64, requires_grad=True)
    assert betas.parse_betas(trained) is trained  # the caller's to train: kept itself
    assert betas.parse_betas("1e-3") == 1e-3
    for bad, shown in (([1, "nan"], "nan"), (torch.tensor([1.0, -2.0]), "-2.0"), (0, "0.0")):
        with pytest.raises(ConfigError, match=rf"^SmoothMax: beta.*{shown}"):
            betas.parse_betas(bad, "SmoothMax: beta")


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, -math.inf])
def test_check_beta_refuses_outside_zero_inf(value):
    with pytest.raises(ConfigError, match=r"^smooth_max: beta must be in \(0, inf\], got "):
        betas.check_beta(value, "smooth_max: beta")
    assert betas.check_beta(math.inf) == math.inf and betas.check_beta(1e-300) == 1e-300


def test_check_betas_one_check_for_every_tensor_beta():
    """The tensor check smooth_max and parse_betas share: NaN, nonpositive and (given the
    compute dtype) underflowing entries refused, the first bad one and the shape named."""
    import torch

    ok = torch.tensor([[0.5, math.inf]], dtype=torch.float64)
    assert betas.check_betas(ok) is ok and betas.check_betas(ok, dtype=torch.float32) is ok
    for bad, shown in ((torch.tensor([1.0, math.nan]), "nan"), (torch.tensor([0.0, -1.0]), "0.0"),
                       (torch.tensor([2.0, -math.inf]), "-inf")):
        with pytest.raises(ConfigError, match=rf"^b must be in \(0, inf\], got a tensor with "
                                              rf"entry {shown} \(shape \(2,\)\)$"):
            betas.check_betas(bad, "b")
    tiny = torch.tensor([1e-39], dtype=torch.float64)  # positive, below float32's normal range
    assert betas.check_betas(tiny) is tiny
    with pytest.raises(ConfigError, match=r"entry 1e-39 \(shape \(1,\)\)"):
        betas.check_betas(tiny, dtype=torch.float32)
    meta = torch.empty(3, device="meta")  # no values: its shape and dtype are the caller's
    assert betas.check_betas(meta) is meta
