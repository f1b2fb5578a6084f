"""Floating-point dtypes by name: the one table of names, the compute-dtype rule, tolerances.

Configs name dtypes with the `DType` enum (`dtype: float32`); library code turns a name into a
`torch.dtype` with `torch_dtype`, and back with `dtype_name`.
"""
from __future__ import annotations

import math
from enum import Enum

import torch


class DType(str, Enum):
    """The floating-point dtypes dnnlab computes in (a config value such as `dtype=float16`)."""

    float64 = "float64"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


TORCH_DTYPES: dict[str, torch.dtype] = {d.value: getattr(torch, d.value) for d in DType}
EPS64 = torch.finfo(torch.float64).eps


def torch_dtype(name: DType | str | torch.dtype) -> torch.dtype:
    """`DType.float32`, "float32" or torch.float32 -> torch.float32 (ValueError if unknown)."""
    if isinstance(name, torch.dtype):
        return name
    key = name.value if isinstance(name, DType) else str(name)
    if key not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {name!r} (known: {', '.join(TORCH_DTYPES)})")
    return TORCH_DTYPES[key]


def dtype_name(dtype: torch.dtype | DType | str) -> str:
    """torch.float32 -> "float32"."""
    if isinstance(dtype, DType):
        return dtype.value
    return str(dtype).removeprefix("torch.")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype dnnlab computes in for inputs of `dtype`: float64 stays float64; float32,
    float16 and bfloat16 are computed in float32 (so reduced-precision inputs keep float32's
    range and accuracy inside a reduction)."""
    if dtype == torch.float64:
        return torch.float64
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float32
    raise TypeError(f"expected float64, float32, float16 or bfloat16, got {dtype}")


def tolerance_for(tol64: float, dtype: torch.dtype) -> float:
    """A pass threshold for `dtype` keeping the share of significant digits that `tol64` keeps
    in float64: tol_d = eps_d ** (log tol64 / log eps_64)  (1e-10 -> float32 3.8e-5,
    float16 1.2e-2, bfloat16 4.5e-2)."""
    if dtype == torch.float64:
        return tol64
    return torch.finfo(dtype).eps ** (math.log(tol64) / math.log(EPS64))


def max_errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max |ref|), computed in float64; NaN fails any check."""
    diff = (ours.double() - ref.double()).abs().max().item() if ours.numel() else 0.0
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    return diff, diff / scale if scale > 0 else diff
