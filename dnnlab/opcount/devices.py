"""Devices for the roofline: peak FLOP/s per dtype and memory bandwidth.

The GPU figures are NVIDIA's datasheets (dense, without structured sparsity: the sparsity
figures are halved; docs/opcount.md "Roofline" cites each one):
- a100-80gb: A100 Tensor Core GPU datasheet (SXM 80GB): FP32 19.5 TFLOPS, TF32 156, BF16/FP16
  312, HBM2e 2,039 GB/s;
- h100-sxm: H100 Tensor Core GPU datasheet (SXM): FP32 67 TFLOPS, TF32 989 (sparse) = 494.5
  dense, BF16/FP16 1,979 (sparse) = 989.5 dense, HBM3 3.35 TB/s;
- h200: H200 Tensor Core GPU datasheet (SXM): the compute of the H100 SXM, HBM3e 4.8 TB/s;
- l4: L4 Tensor Core GPU datasheet: FP32 30.3 TFLOPS, TF32 120 (sparse) = 60 dense, BF16/FP16
  242 (sparse) = 121 dense, GDDR6 300 GB/s.
`cpu` is this machine, measured by `calibrate()`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "tf32", "bf16-fp16")


@dataclass(frozen=True)
class Device:
    """Peak FLOP/s per precision (`PRECISIONS`) and memory bandwidth in bytes/s."""

    name: str
    peak: dict
    bandwidth: float
    source: str = ""
    overhead: float = 0.0  # seconds per op call (dispatch); 0 for the datasheet devices
    depthwise: float = 0.0  # FLOP/s of a depthwise conv (one input channel per group); 0: peak

    def peak_for(self, dtype: str, family_is_mac: bool, tf32: bool = False,
                 depthwise: bool = False) -> float:
        """The peak an op runs at: tensor-core rates for products in half precision (and in
        float32 with `tf32`), the float32 rate for everything else; a depthwise conv at the
        device's depthwise ceiling when it has one (no GEMM: a lower compute roof)."""
        if depthwise and self.depthwise:
            return self.depthwise
        if family_is_mac and dtype in ("float16", "bfloat16"):
            return self.peak["bf16-fp16"]
        if family_is_mac and tf32 and dtype == "float32":
            return self.peak["tf32"]
        return self.peak["fp32"]


T = 1e12
DATASHEETS = {
    "a100-80gb": Device("a100-80gb", {"fp32": 19.5 * T, "tf32": 156 * T, "bf16-fp16": 312 * T},
                        2039e9, "NVIDIA A100 Tensor Core GPU datasheet, SXM 80GB"),
    "h100-sxm": Device("h100-sxm", {"fp32": 67 * T, "tf32": 494.5 * T,
                                    "bf16-fp16": 989.5 * T},
                       3.35e12, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM"),
    "h200": Device("h200", {"fp32": 67 * T, "tf32": 494.5 * T, "bf16-fp16": 989.5 * T},
                   4.8e12, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM"),
    "l4": Device("l4", {"fp32": 30.3 * T, "tf32": 60 * T, "bf16-fp16": 121 * T}, 300e9,
                 "NVIDIA L4 Tensor Core GPU datasheet"),
}
DEVICES = (*DATASHEETS, "cpu")


@functools.cache
def _calibrated(threads: int, n: int, copy_mb: int) -> Device:
    from dnnlab.core.timing import quiet_benchmark

    benchmark = quiet_benchmark()

    a, b = torch.randn(n, n), torch.randn(n, n)
    mm = benchmark.Timer("a @ b", globals={"a": a, "b": b}, num_threads=threads)
    flops = 2 * n ** 3 / mm.blocked_autorange(min_run_time=0.3).median
    x = torch.empty(copy_mb * 2 ** 18)  # float32: copy_mb MB
    y = torch.empty_like(x)
    cp = benchmark.Timer("y.copy_(x)", globals={"x": x, "y": y}, num_threads=threads)
    bandwidth = 2 * x.numel() * 4 / cp.blocked_autorange(min_run_time=0.3).median
    z = torch.empty(1)
    call = benchmark.Timer("torch.relu(z)", globals={"z": z, "torch": torch},
                           num_threads=threads)
    overhead = call.blocked_autorange(min_run_time=0.1).median
    dw = torch.nn.Conv2d(128, 128, 3, padding=1, groups=128, bias=False)
    img = torch.randn(1, 128, 28, 28)  # (B, C, H, W): 9 MACs per output, each channel its own
    with torch.no_grad():
        conv = benchmark.Timer("dw(img)", globals={"dw": dw, "img": img}, num_threads=threads)
        conv.timeit(3)  # warm-up: the first calls choose and build the kernel
        depthwise = 2 * 9 * img.numel() / conv.blocked_autorange(min_run_time=0.2).median
    return Device("cpu", {p: flops for p in PRECISIONS}, bandwidth,
                  f"calibrated: {n}^3 float32 matmul, a {copy_mb} MB copy, a one-element "
                  f"op (dispatch overhead) and a 3x3 depthwise conv on 128x28x28, "
                  f"{threads} threads", overhead, min(depthwise, flops))


def calibrate(threads: int | None = None, n: int = 1024, copy_mb: int = 256) -> Device:
    """This CPU as a Device: a large float32 matmul's FLOP/s (every precision), a large
    copy's bytes/s (read + write), a one-element op's time (the per-call overhead) and a
    depthwise conv's FLOP/s (the ceiling of convs with one input channel per group), timed
    with torch.utils.benchmark at `threads` (default: torch's thread count); cached per
    process for the same arguments."""
    return _calibrated(int(threads or torch.get_num_threads()), int(n), int(copy_mb))


def device(name: str) -> Device:
    """A named device (`DEVICES`); `cpu` is calibrated. An unknown name: one line naming it."""
    if name == "cpu":
        return calibrate()
    if name not in DATASHEETS:
        raise ValueError(f"roofline device {name!r} is not known; one of {', '.join(DEVICES)}")
    return DATASHEETS[name]
