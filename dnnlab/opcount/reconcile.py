"""Reconcile dnnlab's analytic counts (docs/math.md (2)) with fvcore (forward) and torch's
FlopCounterMode (forward + backward of a training step).

fvcore traces the model with real CPU tensors (it cannot trace meta tensors) and counts MACs
per module and per operator. Our families map onto fvcore's operators as:
conv = fvcore `conv`; linear = fvcore `linear` + `addmm`; matmul = `matmul` + `bmm` + `mm` +
`einsum`; norm = `batch_norm` + `layer_norm` + `group_norm` + `instance_norm`;
pool = `adaptive_avg_pool*`. Conv and linear must agree exactly; every other difference is
explained row by row (`WHY`).
"""
from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from dnnlab.opcount.counter import count_ops, meta_state
from dnnlab.opcount.rows import MAC_FAMILIES, OpReport

FVCORE_FAMILY = {
    "conv": "conv", "linear": "linear", "addmm": "linear",
    "matmul": "matmul", "bmm": "matmul", "mm": "matmul", "einsum": "matmul",
    "batch_norm": "norm", "layer_norm": "norm", "group_norm": "norm", "instance_norm": "norm",
    "adaptive_avg_pool1d": "pool", "adaptive_avg_pool2d": "pool", "adaptive_avg_pool3d": "pool",
}
STRICT = ("conv", "linear")  # families that must equal fvcore's exactly

WHY = {
    "attention": "fvcore has no handle for scaled_dot_product_attention and skips it; dnnlab "
                 "counts its two products (q k^T and attn v)",
    "norm": "fvcore counts a norm as 1 op per element (x2 with affine, eval) or by its own "
            "training formula; dnnlab counts the mults and adds of normalize + affine",
    "pool": "fvcore counts adaptive average pooling as 1 op per input element and ignores max "
            "pooling; dnnlab counts window adds/comparisons per output",
    "elementwise": "fvcore ignores elementwise ops (activations, residual adds, scaling)",
    "bias": "bias adds are not MACs: fvcore leaves them out",
    "smooth_max": "fvcore cannot see inside custom autograd Functions (prim::PythonOp)",
    "matmul": "fvcore counts matmul/bmm/einsum by its own handles; a difference here is a bug",
    "conv": "conv must match fvcore exactly; a difference is a bug",
    "linear": "linear must match fvcore exactly; a difference is a bug",
}


@dataclass
class Comparison:
    """One module's count of one family, by dnnlab and by fvcore (`why` when they differ)."""

    path: str
    family: str
    analytic: int
    fvcore: int
    match: bool
    why: str = ""


@dataclass
class Reconciliation:
    """dnnlab's counts against fvcore's (per row and per family) and FlopCounterMode's."""

    report: OpReport
    rows: list  # list[Comparison], per module and family
    totals: dict  # family -> {"analytic": int, "fvcore": int}
    reconciled: bool  # conv and linear equal fvcore's, per layer and in total
    flop_counter: dict = field(default_factory=dict)  # forward+backward vs FlopCounterMode

    def to_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "totals": self.totals,
                "reconciled": self.reconciled, "flop_counter": self.flop_counter}


def fvcore_counts(model: torch.nn.Module, input_shape: Sequence[int]) -> dict:
    """{module path: {fvcore op: MACs}} for the ops each module runs itself (children removed).

    The model must hold real (CPU) tensors: fvcore cannot trace meta tensors. It is traced in
    eval mode with gradients on, and put back in the mode it was in.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import warns about torch.jit.script
        from fvcore.nn import FlopCountAnalysis
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.zeros(list(input_shape))
            fca = FlopCountAnalysis(model, x)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            fca.tracer_warnings("none")
            total = fca.by_module_and_operator()
    finally:
        model.train(was_training)
    children = {n: [c for c, _ in m.named_children()] for n, m in model.named_modules()}
    own: dict = {}
    for path, ops in total.items():
        mine = defaultdict(int, ops)
        for c in children.get(path, []):
            cpath = f"{path}.{c}" if path else c
            for op, v in total.get(cpath, {}).items():
                mine[op] -= v
        own[path] = {op: v for op, v in mine.items() if v}
    return own


def _torch_conv_backward(row) -> int:
    """FlopCounterMode's own count (in MACs) of a conv's backward, from its registered formula.

    For grouped convs it differs from the true count: its weight-gradient formula ignores
    `groups` (a depthwise 3x3 conv over C channels is counted C times too many).
    """
    from torch.utils.flop_counter import conv_backward_flop

    e = row.extra
    out_shape = row.out_shape if len(row.out_shape) == len(e["w_shape"]) else [1] + row.out_shape
    in_shape = row.in_shape if len(row.in_shape) == len(e["w_shape"]) else [1] + row.in_shape
    mask = [e["x_rg"], e["w_rg"], False]
    return conv_backward_flop(out_shape, in_shape, e["w_shape"], None, None, None, None,
                              e["transposed"], None, e["groups"], mask,
                              out_val=(in_shape, e["w_shape"], None)) // 2


def flop_counter_check(model: torch.nn.Module, input_shape: Sequence[int],
                       report: OpReport) -> dict:
    """Forward and backward of a training step under torch.utils.flop_counter.FlopCounterMode.

    Runs on the meta device (where SDPA takes the math path: its products appear as bmm).
    FlopCounterMode counts 2 flops per MAC for mm/addmm/bmm/conv/SDPA and their backward; we
    compare 2 x our MACs, forward and backward separately. Grouped convs: FlopCounterMode
    over-counts their backward (see `_torch_conv_backward`); we report our true count and also
    the count under torch's formula, which must match exactly.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(list(input_shape), device="meta")
    modes = {m: m.training for m in model.modules()}
    model.train(report.training)
    try:
        with FlopCounterMode(display=False) as fwd_mode:
            out = torch.func.functional_call(model, meta_state(model), (x,), strict=False,
                                             tie_weights=True)
    finally:
        for m, t in modes.items():
            m.training = t
    out = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(out, dict):
        out = next(iter(out.values()))
    with FlopCounterMode(display=False) as bwd_mode:
        out.sum().backward()
    fwd_torch, bwd_torch = int(fwd_mode.get_total_flops()), int(bwd_mode.get_total_flops())
    fwd, bwd = report.total_macs(), report.total_macs(backward=True)
    grouped = [r for r in report.layers if r.family == "conv" and r.extra.get("groups", 1) > 1]
    bwd_torch_formula = bwd + sum(_torch_conv_backward(r) - r.bwd_macs for r in grouped)
    res = {"forward_flops_torch": fwd_torch, "forward_flops_analytic": 2 * fwd,
           "backward_flops_torch": bwd_torch, "backward_flops_analytic": 2 * bwd,
           "backward_flops_analytic_torch_formula": 2 * bwd_torch_formula,
           "grouped_convs": len(grouped)}
    res["match"] = (2 * fwd == fwd_torch) and (2 * bwd_torch_formula == bwd_torch)
    res["why"] = ("" if 2 * bwd == bwd_torch else
                  f"FlopCounterMode's convolution_backward ignores groups in {len(grouped)} "
                  "grouped convs (it over-counts them); with its formula for those layers the "
                  "counts agree" if res["match"] else "mismatch: a bug")
    return res


def reconcile(model: torch.nn.Module, input_shape: Sequence[int], *, count_bias: bool = True,
              backward: bool = True, report: OpReport | None = None) -> Reconciliation:
    """Compare dnnlab's counts with fvcore's layer by layer and family by family.

    `model` must have real CPU weights (for fvcore). Every row that differs says why.
    """
    report = report or count_ops(model, input_shape, count_bias=count_bias)
    ours: dict = defaultdict(lambda: defaultdict(int))
    unseen: dict = defaultdict(int)  # MACs that fvcore cannot see, per (path, family)
    for row in report.layers:
        ours[row.path][row.family] += row.macs
        if row.extra.get("string_padding"):
            unseen[(row.path, row.family)] += row.macs
    theirs: dict = defaultdict(lambda: defaultdict(int))
    for path, ops in fvcore_counts(model, input_shape).items():
        for op, v in ops.items():
            theirs[path][FVCORE_FAMILY.get(op, op)] += int(v)
    rows, totals = [], defaultdict(lambda: {"analytic": 0, "fvcore": 0})
    for f in MAC_FAMILIES:
        totals[f]
    for path in sorted(set(ours) | set(theirs)):
        for fam in sorted(set(ours[path]) | set(theirs[path])):
            a, b = int(ours[path].get(fam, 0)), int(theirs[path].get(fam, 0))
            if a == 0 and b == 0:
                continue
            totals[fam]["analytic"] += a
            totals[fam]["fvcore"] += b
            why = "" if a == b else WHY.get(fam, f"fvcore operator '{fam}' has no dnnlab family")
            if a != b and a - unseen[(path, fam)] == b:
                why = ("fvcore has no handle for aten::_convolution_mode (padding given as the "
                       "string 'same'/'valid') and skips these convs")
            rows.append(Comparison(path, fam, a, b, a == b, why))
    explained = sum(unseen.values())
    ok = all(r.match or r.why.startswith("fvcore has no handle") for r in rows
             if r.family in STRICT) and all(
        totals[f]["analytic"] - (explained if f == "conv" else 0) == totals[f]["fvcore"]
        for f in STRICT)
    fc = flop_counter_check(model, input_shape, report) if backward else {}
    return Reconciliation(report, rows, dict(totals), ok, fc)
