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

from dnnlab.core.errors import first_line
from dnnlab.opcount.counter import as_inputs, call_args, count_ops, swapped, tensors_of
from dnnlab.opcount.memory import over_budget
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
    "matmul": "fvcore counts matmul/bmm/einsum by its own handles (its einsum handle multiplies "
              "every index size; dnnlab follows torch's pairwise contractions)",
    "recurrent": "fvcore has no handle for RNN/LSTM/GRU layers and skips them",
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
    # True: every check ran and agreed; False: one failed (`failed`); None: none failed but
    # one did not run (`skipped`, with `skip_reasons`)
    reconciled: bool | None
    flop_counter: dict = field(default_factory=dict)  # forward (+backward) vs FlopCounterMode
    failed: list = field(default_factory=list)  # the checks that failed: "fvcore", "flop_counter"
    fvcore_error: str = ""  # why fvcore could not count the model ("" when it did)
    skipped: list = field(default_factory=list)  # the checks that did not run
    skip_reasons: list = field(default_factory=list)  # one line each

    def to_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "totals": self.totals,
                "reconciled": self.reconciled, "failed": self.failed,
                "fvcore_error": self.fvcore_error, "flop_counter": self.flop_counter,
                "skipped": self.skipped, "skip_reasons": self.skip_reasons}


def _fvcore_args(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """The call as positional arguments (fvcore traces with a tuple): keyword arguments are put
    in their place in `forward`'s signature; one that cannot be is a ValueError."""
    if not kwargs:
        return tuple(args)
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    last = max(params.index(k) for k in bound)
    out = []
    for k in params[:last + 1]:
        if k not in bound:
            raise ValueError(f"fvcore takes positional inputs only; '{k}' is not given")
        out.append(bound[k])
    return tuple(out)


def fvcore_counts(model: torch.nn.Module, input_shape: Sequence[int] | None = None, *,
                  inputs=None) -> dict:
    """{module path: {fvcore op: MACs}} for the ops each module runs itself (children removed).

    fvcore traces the model with real CPU tensors (it cannot trace meta tensors): meta weights
    are replaced by zeros and meta inputs by zeros for the trace only (`counter.swapped`). The
    model is traced in eval mode with gradients on; everything is put back afterwards.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import warns about torch.jit.script
        from fvcore.nn import FlopCountAnalysis
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    args, kwargs = call_args(input_shape, inputs)
    args, kwargs = as_inputs(args, kwargs, meta=False)
    with warnings.catch_warnings(), swapped(model, meta=False, copy=False):
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(model, _fvcore_args(model, args, kwargs))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        fca.tracer_warnings("none")
        total = fca.by_module_and_operator()
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


# Products that FlopCounterMode has no formula for (it counts them 0): dnnlab counts them, the
# check leaves them out and says so. On CPU tensors it also misses the CPU attention kernels.
FLOP_COUNTER_BLIND = {"addbmm", "addmv", "mv", "dot", "vdot", "bilinear", "linalg_vecdot"}
FLOP_COUNTER_BLIND_CPU = {"scaled_dot_product_attention"}


def _grad_root(out):
    """The first floating-point output tensor that requires grad (None if there is none)."""
    for t in tensors_of(out if not hasattr(out, "to_tuple") else out.to_tuple()):
        if t.is_floating_point() and t.requires_grad:
            return t
    return None


def flop_counter_check(model: torch.nn.Module, input_shape: Sequence[int] | None,
                       report: OpReport, *, inputs=None, backward: bool = True) -> dict:
    """Forward (and backward of a training step) under torch.utils.flop_counter.FlopCounterMode.

    Runs where the count ran: on the meta device (where SDPA takes the math path: its products
    appear as bmm), or on CPU copies for a model that needs values (`report.mode == "cpu"`).
    FlopCounterMode counts 2 flops per MAC for mm/addmm/bmm/baddbmm/conv/SDPA and their
    backward; we compare 2 x our MACs of the product families, forward and backward
    separately, leaving out the products it has no formula for (`FLOP_COUNTER_BLIND`). Grouped
    convs: FlopCounterMode over-counts their backward (see `_torch_conv_backward`); we report
    our true count and also the count under torch's formula, which must match exactly.
    """
    from torch.utils.flop_counter import FlopCounterMode

    meta = report.mode == "meta"
    args, kwargs = call_args(input_shape, inputs)
    args, kwargs = as_inputs(args, kwargs, meta=meta)
    with swapped(model, meta=meta, training=report.training) as m:
        with FlopCounterMode(display=False) as fwd_mode:
            out = m(*args, **kwargs)
        root = _grad_root(out) if backward else None
        bwd_torch = None
        if root is not None:
            with FlopCounterMode(display=False) as bwd_mode:
                root.sum().backward()
            bwd_torch = int(bwd_mode.get_total_flops())
    blind_ops = FLOP_COUNTER_BLIND | (set() if meta else FLOP_COUNTER_BLIND_CPU)
    blind = [r for r in report.layers if r.op in blind_ops and r.family in MAC_FAMILIES]
    fwd_torch = int(fwd_mode.get_total_flops())
    fwd = report.total_macs() - sum(r.macs for r in blind)
    res = {"device": "meta" if meta else "cpu",
           "forward_flops_torch": fwd_torch, "forward_flops_analytic": 2 * fwd,
           "not_seen_by_torch": sorted({r.op for r in blind}),
           "not_seen_macs": sum(r.macs for r in blind)}
    res["forward_match"] = 2 * fwd == fwd_torch
    why = [] if res["forward_match"] else ["forward differs: a bug"]
    if backward and bwd_torch is None:
        res["backward"] = "not checked: no output requires grad"
    elif backward:
        bwd = report.total_macs(backward=True) - sum(r.bwd_macs for r in blind)
        grouped = [r for r in report.layers
                   if r.family == "conv" and r.extra.get("groups", 1) > 1]
        bwd_torch_formula = bwd + sum(_torch_conv_backward(r) - r.bwd_macs for r in grouped)
        res.update({"backward_flops_torch": bwd_torch, "backward_flops_analytic": 2 * bwd,
                    "backward_flops_analytic_torch_formula": 2 * bwd_torch_formula,
                    "grouped_convs": len(grouped)})
        res["backward_match"] = 2 * bwd_torch_formula == bwd_torch
        if not res["backward_match"]:
            why.append("backward differs: dnnlab counts the backward of every op, autograd "
                       "only of the ops that reach the output checked (a head whose output is "
                       "not used, such as BERT's pooler, has none)")
        elif 2 * bwd != bwd_torch:
            why.append(f"FlopCounterMode's convolution_backward ignores groups in "
                       f"{len(grouped)} grouped convs (it over-counts them); with its formula "
                       "for those layers the counts agree")
    if blind:
        why.append(f"FlopCounterMode has no formula for {', '.join(res['not_seen_by_torch'])} "
                   f"({res['not_seen_macs']:,} MACs counted by dnnlab only)")
    res["match"] = res["forward_match"]  # the check of `reconciled`; backward: informative
    res["why"] = "; ".join(why)
    return res


def _fvcore_rows(report: OpReport, theirs: dict) -> tuple[list, dict, bool]:
    ours: dict = defaultdict(lambda: defaultdict(int))
    unseen: dict = defaultdict(int)  # MACs that fvcore cannot see, per (path, family)
    for row in report.layers:
        ours[row.path][row.family] += row.macs
        if row.extra.get("string_padding"):
            unseen[(row.path, row.family)] += row.macs
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
    return rows, dict(totals), ok


def reconcile(model: torch.nn.Module, input_shape: Sequence[int] | None = None, *,
              inputs=None, count_bias: bool = True, backward: bool = True,
              report: OpReport | None = None, max_gb: float = 4.0) -> Reconciliation:
    """Compare dnnlab's counts with fvcore's layer by layer and family by family, and the
    product families with FlopCounterMode's (forward, and with `backward` a training step).

    `reconciled` is True only when every check ran and agreed: conv/linear equal fvcore's AND
    the product families equal FlopCounterMode's. It is False when a check disagreed (`failed`
    names it) and None when none disagreed but one did not run (`skipped`, `skip_reasons`):
    fvcore cannot trace the model (`fvcore_error`: a dict output, an allocation that fails), or
    a check on real CPU tensors would need more than `max_gb` GB (estimated from the meta count
    before it runs, `memory.real_run_bytes`). Every row that differs says why. The model is
    left as it was.
    """
    report = report or count_ops(model, input_shape, inputs=inputs, count_bias=count_bias)
    skipped, reasons = [], []
    fv_error = over_budget(report, max_gb, "fvcore")
    theirs_raw: dict = {}
    if not fv_error:
        try:
            theirs_raw = fvcore_counts(model, input_shape, inputs=inputs)
        except Exception as err:  # noqa: BLE001 - fvcore cannot trace every model: say why
            fv_error = first_line(err)
    theirs: dict = defaultdict(lambda: defaultdict(int))
    for path, ops in theirs_raw.items():
        for op, v in ops.items():
            theirs[path][FVCORE_FAMILY.get(op, op)] += int(v)
    if fv_error:
        rows, totals, fv_ok = [], {f: {"analytic": v, "fvcore": None} for f, v in
                                   report.totals().items() if f in MAC_FAMILIES}, True
        skipped.append("fvcore")
        reasons.append(fv_error if fv_error.startswith("fvcore skipped")
                       else f"fvcore did not run: {fv_error}")
    else:
        rows, totals, fv_ok = _fvcore_rows(report, theirs)
    fc_skip = over_budget(report, max_gb, "flop_counter") if report.mode == "cpu" else ""
    if fc_skip:
        fc = {"match": None, "why": fc_skip}
        skipped.append("flop_counter")
        reasons.append(fc_skip)
    else:
        fc = flop_counter_check(model, input_shape, report, inputs=inputs, backward=backward)
    failed = ([] if fv_ok else ["fvcore"]) + ([] if fc["match"] in (True, None)
                                              else ["flop_counter"])
    verdict = False if failed else (None if skipped else True)
    return Reconciliation(report, rows, totals, verdict, fc, failed, fv_error, skipped, reasons)
