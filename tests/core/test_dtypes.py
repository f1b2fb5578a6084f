"""dnnlab.core.dtypes: names, compute dtypes, tolerances and errors against float64."""
from __future__ import annotations

import math

import pytest
import torch

from dnnlab.core import dtypes


@pytest.mark.parametrize("name", ["float64", "float32", "float16", "bfloat16"])
def test_dtype_names_round_trip(name):
    t = dtypes.torch_dtype(name)
    assert t == getattr(torch, name) == dtypes.torch_dtype(dtypes.DType(name))
    assert dtypes.torch_dtype(t) is t
    assert dtypes.dtype_name(t) == name == dtypes.dtype_name(dtypes.DType(name))


def test_unknown_dtype_and_compute_dtype():
    with pytest.raises(ValueError, match="int8"):
        dtypes.torch_dtype("int8")
    assert dtypes.compute_dtype(torch.float64) == torch.float64
    for d in (torch.float32, torch.float16, torch.bfloat16):
        assert dtypes.compute_dtype(d) == torch.float32
    with pytest.raises(TypeError):
        dtypes.compute_dtype(torch.int64)


def test_tolerance_keeps_the_share_of_digits():
    assert dtypes.tolerance_for(1e-10, torch.float64) == 1e-10
    # 1e-10 is 10/15.65 of float64's digits; the same share of float32's eps
    got = dtypes.tolerance_for(1e-10, torch.float32)
    expect = torch.finfo(torch.float32).eps ** (math.log(1e-10) / math.log(dtypes.EPS64))
    assert got == pytest.approx(expect) and 1e-5 < got < 1e-4


def test_max_errors_against_float64():
    ref = torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64)
    ours = ref.float() + torch.tensor([0.0, 0.5, 0.0])
    a, r = dtypes.max_errors(ours, ref)
    assert a == 0.5 and r == pytest.approx(0.5 / 4)
    assert dtypes.max_errors(torch.zeros(0), torch.zeros(0)) == (0.0, 0.0)
    assert dtypes.max_errors(torch.ones(2), torch.zeros(2)) == (1.0, 1.0)
