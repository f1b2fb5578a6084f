"""How much CPU memory a check on real tensors would take, estimated from the meta count.

fvcore traces the model on real CPU tensors (it cannot trace meta ones), with gradients on:
every activation is kept for the trace. The estimate is the weights (parameters and buffers)
plus the input plus every counted op's output, at 4 bytes (float32) per element: a lower bound
of what the trace holds (ops that are not counted, such as activations and views, add more).
`reconcile` skips a check whose estimate is above its budget (`reconcile_max_gb`) and says so.
"""
from __future__ import annotations

from math import prod

from dnnlab.opcount.rows import OpReport

GB = 2 ** 30
FLOAT_BYTES = 4


def real_run_bytes(report: OpReport) -> int:
    """Bytes a forward on real float32 CPU tensors holds at least (weights + activations)."""
    weights = report.params.get("total", 0) + report.buffers.get("total", 0)
    activations = prod(report.input_shape) if report.input_shape else 0
    activations += sum(prod(r.out_shape) for r in report.layers if r.out_shape)
    return FLOAT_BYTES * int(weights + activations)


def over_budget(report: OpReport, max_gb: float, check: str) -> str:
    """'' when the check fits in `max_gb`; otherwise the one line saying why it is skipped."""
    need = real_run_bytes(report)
    if need <= max_gb * GB:
        return ""
    return (f"{check} skipped: on real CPU tensors it would need about {need / GB:,.1f} GB "
            f"(weights + activations, from the meta count), above reconcile_max_gb={max_gb:g}")
