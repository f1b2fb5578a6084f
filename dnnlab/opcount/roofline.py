"""The roofline time of every counted op on a device (docs/opcount.md "Roofline").

An op takes max(FLOPs / peak, bytes / bandwidth) (+ the device's per-call overhead: 0 for the
datasheet GPUs, calibrated for `cpu`): compute-bound when its FLOPs take longer
than its bytes, memory-bound otherwise. FLOPs are 2 per MAC for the product families and the
elementary operations otherwise; bytes are the op's reads + writes (traffic.py); the peak is
the device's for the op's dtype (devices.Device.peak_for), and a depthwise conv's the device's
depthwise ceiling where it has one (`cpu`: calibrated). Forward only; every op is its own
kernel (no fusion, no launch overhead, no cache).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dnnlab.opcount.devices import Device, device
from dnnlab.opcount.rows import MAC_FAMILIES, OpReport


@dataclass
class RooflineRow:
    path: str
    op: str
    family: str
    flops: int
    bytes: int
    intensity: float  # FLOPs per byte
    seconds: float
    bound: str  # "compute" | "memory"
    peak: float  # the FLOP/s it could reach


@dataclass
class Roofline:
    device: Device
    rows: list = field(default_factory=list)  # list[RooflineRow]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    @property
    def ridge(self) -> float:
        """The float32 ridge point (FLOPs per byte) of the device."""
        return self.device.peak["fp32"] / self.device.bandwidth

    def by_module(self) -> dict:
        """{module path: predicted seconds of the ops it runs itself}."""
        out: dict = {}
        for r in self.rows:
            out[r.path] = out.get(r.path, 0.0) + r.seconds
        return out

    def summary(self) -> dict:
        return {"device": self.device.name, "source": self.device.source,
                "peak_flops": dict(self.device.peak), "bandwidth": self.device.bandwidth,
                "depthwise_flops": self.device.depthwise or None,
                "seconds": self.seconds,
                "compute_bound": sum(r.bound == "compute" for r in self.rows),
                "memory_bound": sum(r.bound == "memory" for r in self.rows)}


def is_depthwise(row) -> bool:
    """A conv with one input channel per group (w: (C_out, 1, k...)) and more than one group:
    no GEMM behind it, so its compute roof is the device's depthwise ceiling."""
    w = row.extra.get("w_shape")
    return row.family == "conv" and row.extra.get("groups", 1) > 1 and bool(w) and w[1] == 1


def roofline(report: OpReport, dev: str | Device, *, tf32: bool = False) -> Roofline:
    """Per counted op its predicted seconds and bound on `dev` (a name of
    `devices.DEVICES` or a Device), and the total (`.seconds`)."""
    d = device(dev) if isinstance(dev, str) else dev
    out = Roofline(d)
    for row in report.layers:
        moved = row.read_bytes + row.write_bytes
        peak = d.peak_for(row.dtype, row.family in MAC_FAMILIES, tf32, is_depthwise(row))
        compute, memory = row.flops / peak, moved / d.bandwidth
        out.rows.append(RooflineRow(row.path, row.op, row.family, row.flops, moved,
                                    row.intensity, max(compute, memory) + d.overhead,
                                    "compute" if compute >= memory else "memory", peak))
    return out
