"""The op-count experiment: count a built model (docs/math.md (2)), reconcile it with fvcore and
FlopCounterMode, and return the result as rows and totals.

`OpcountSettings` is the schema of conf/opcount.yaml (minus `wandb`/`paths`); `run` takes a
built model and typed arguments, never a config:

    model = build_meta(lambda: torchvision.models.alexnet())
    result = run(model, [1, 3, 224, 224], name="alexnet")
    result.to_dict()["totals"]["conv"]     # {"analytic": 655566528, "fvcore": 655566528}
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dnnlab.core.errors import require
from dnnlab.core.table import Table
from dnnlab.opcount.counter import _map, call_args, count_ops
from dnnlab.opcount.reconcile import STRICT, Reconciliation, reconcile
from dnnlab.opcount.rows import MAC_FAMILIES, OpReport

UNITS = {"MACs": 1, "FLOPs": 2}  # FLOPs = 2 MACs (a multiply and an add)


@dataclass
class CountSettings:
    """What is counted (conf/opcount.yaml `count:`)."""

    backward: bool = True  # also the backward of a training step (checked with FlopCounterMode)
    bias: bool = True  # the bias add in `adds` (the convention of docs/math.md (2): adds = mults)
    input_grad: bool = False  # the input requires grad: its gradient is counted in backward


@dataclass
class MemorySettings:
    """A training step's memory (conf/opcount.yaml `memory:`; `memory=true` selects
    conf/memory/true.yaml, which sets `enabled`)."""

    enabled: bool = False
    optimizer: Any = "adam"  # sgd | adam | adamw | null
    precision: str = "32"  # 32 | bf16 | fp16
    train: bool = True  # false: a forward under no_grad
    measure: bool = False  # also measure a real step on the CPU
    measure_max_gb: float = 4.0  # refuse measuring (memory, timing) above this predicted peak
    kv_context: Any = None  # an HF causal LM: its KV cache at this many tokens

    def __post_init__(self) -> None:
        from dnnlab.opcount.memory_predict import check_step

        self.precision = check_step(self.optimizer, self.precision)
        require(isinstance(self.measure_max_gb, (int, float)) and not isinstance(
            self.measure_max_gb, bool) and self.measure_max_gb > 0, "measure_max_gb",
            self.measure_max_gb, "must be a number of GB > 0")
        require(self.kv_context is None or (isinstance(self.kv_context, int) and not isinstance(
            self.kv_context, bool) and self.kv_context >= 1), "kv_context", self.kv_context,
            "must be an int >= 1 or null")


@dataclass
class OpcountSettings:
    """conf/opcount.yaml: the model (a conf/model node: name, input_shape, builder), the input
    shape (null: the model's), what to count, and what to check."""

    model: Any = field(default_factory=dict)  # {name, input_shape, inputs, builder: {...}}
    input_shape: list[int] | None = None  # (N, C, H, W); null: model.input_shape
    inputs: Any = None  # {arg: {shape, dtype, high}} / [spec, ...] / spec; null: model.inputs
    unit: str = "MACs"  # totals in MACs or FLOPs (= 2 MACs for the product families)
    count: CountSettings = field(default_factory=CountSettings)
    training: bool = False  # count in train mode (auxiliary heads run); default eval, as fvcore
    reconcile: bool = True  # compare with fvcore (needs real CPU weights: built on demand)
    reconcile_max_gb: float = 4.0  # skip a check on real CPU tensors estimated above this
    fail_on_mismatch: bool = False  # a job error when conv/linear differ from fvcore
    show_rows: int = 60  # rows of the per-layer table printed in the terminal
    show_depth: int = 2  # depth of the module rollup (tree, rollup.csv, W&B table)
    roofline: str | None = None  # a device of devices.DEVICES: roofline.png, results roofline
    measure: bool = False  # time every leaf module on this CPU against the cpu roofline
    memory: MemorySettings = field(default_factory=MemorySettings)  # a training step's memory

    def __post_init__(self) -> None:
        require(isinstance(self.model, Mapping) and isinstance(self.model.get("builder"),
                                                               Mapping),
                "model", self.model, "expected a model config with a `builder`")
        require(self.unit in UNITS, "unit", self.unit, "expected MACs or FLOPs")
        if self.inputs is None and self.input_shape is None:
            self.inputs = self.model.get("inputs")
        if self.input_shape is None and self.inputs is None:
            self.input_shape = self.model.get("input_shape")
        shape = self.input_shape
        if shape is not None:
            require(isinstance(shape, (list, tuple)) and len(shape) > 0, "input_shape", shape,
                    "expected a list of sizes, e.g. [1, 3, 224, 224]")
            require(all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                        for s in shape), "input_shape", shape, "every size must be an int >= 1")
            self.input_shape = [int(s) for s in shape]
        if self.inputs is not None:
            from dnnlab.opcount.zoo import make_inputs

            make_inputs(self.inputs)  # checks every spec (one line naming the key)
        from dnnlab.opcount.devices import DEVICES

        require(self.roofline is None or self.roofline in DEVICES, "roofline", self.roofline,
                f"expected one of {', '.join(DEVICES)}")
        require(self.show_rows >= 0, "show_rows", self.show_rows, "must be >= 0")
        require(isinstance(self.show_depth, int) and not isinstance(self.show_depth, bool)
                and self.show_depth >= 0, "show_depth", self.show_depth, "must be an int >= 0")
        require(isinstance(self.reconcile_max_gb, (int, float)) and not isinstance(
            self.reconcile_max_gb, bool) and self.reconcile_max_gb > 0, "reconcile_max_gb",
            self.reconcile_max_gb, "must be a number of GB > 0")

    @property
    def name(self) -> str:
        return str(self.model.get("name") or "model")


@dataclass
class OpcountResult:
    """One model's counts: per op (`layers`, with fvcore's count of its module and family) and
    per family (`totals`), and the checks against fvcore and FlopCounterMode."""

    report: OpReport  # the counter's rows (results.csv)
    reconciliation: Reconciliation | None  # None when not reconciled
    backward: bool  # backward_totals were asked for
    unit: str = "MACs"  # the unit of totals and tables: MACs, or FLOPs = 2 MACs

    @property
    def model(self) -> str:
        return self.report.model

    @property
    def input_shape(self) -> list:
        return list(self.report.input_shape)

    @property
    def reconciled(self) -> bool | None:
        return None if self.reconciliation is None else self.reconciliation.reconciled

    def layers(self) -> list[dict]:
        """One dict per counted op, with fvcore's count of its (module, family) and `match`."""
        fv = {}
        if self.reconciliation is not None:
            fv = {(r.path, r.family): r for r in self.reconciliation.rows}
        out = []
        for row in self.report.layers:
            c = fv.get((row.path, row.family))
            out.append({
                "path": row.path, "type": row.module_type, "op": row.op, "family": row.family,
                "in_shape": row.in_shape, "out_shape": row.out_shape, "mults": row.mults,
                "adds": row.adds, "macs": row.macs, "bwd_macs": row.bwd_macs,
                "read_bytes": row.read_bytes, "write_bytes": row.write_bytes,
                "bwd_bytes": row.bwd_bytes, "intensity": row.intensity,
                "fvcore": None if c is None else c.fvcore,
                "match": None if c is None else c.match,
                "why": "" if c is None else c.why})
        return out

    def totals(self) -> dict:
        """{family: {"analytic": int, "fvcore": int | None}} in `unit` (MACs, or FLOPs = 2
        MACs) for the product families; other families: ops."""
        totals = {fam: {"analytic": int(v), "fvcore": None}
                  for fam, v in self.report.totals().items()}
        if self.reconciliation is not None:
            for fam, v in self.reconciliation.totals.items():
                totals.setdefault(fam, {"analytic": 0, "fvcore": None})["fvcore"] = v["fvcore"]
                if fam in MAC_FAMILIES or fam in STRICT:
                    totals[fam]["analytic"] = v["analytic"]
        k = UNITS[self.unit]
        if k != 1:
            for fam in MAC_FAMILIES:
                if fam in totals:
                    totals[fam] = {key: None if v is None else k * v
                                   for key, v in totals[fam].items()}
        return totals

    def mismatches(self, strict: bool = False) -> list[dict]:
        """The rows where dnnlab and fvcore differ, each with why (strict: conv/linear only)."""
        if self.reconciliation is None:
            return []
        return [{"path": r.path, "family": r.family, "analytic": r.analytic, "fvcore": r.fvcore,
                 "why": r.why} for r in self.reconciliation.rows
                if not r.match and (not strict or r.family in STRICT)]

    def to_dict(self) -> dict:
        """results.json."""
        rec = self.reconciliation
        return {
            "model": self.model, "input_shape": self.input_shape, "unit": self.unit,
            "inputs": self.report.inputs, "mode": self.report.mode,
            "mode_reason": self.report.mode_reason,
            "not_counted": {k: list(v) for k, v in self.report.not_counted.items()},
            "params": dict(self.report.params), "buffers": dict(self.report.buffers),
            "fvcore_error": None if rec is None else rec.fvcore_error,
            "failed_checks": None if rec is None else rec.failed,
            "skipped_checks": None if rec is None else rec.skipped,
            "count_bias": self.report.count_bias, "layers": self.layers(),
            "totals": self.totals(),
            "backward_totals": self.report.totals(backward=True) if self.backward else None,
            "causal_totals": (self.report.totals(causal=True) if self.report.has_causal()
                              else None),
            "reconciled": self.reconciled,
            "flop_counter": None if rec is None else rec.flop_counter,
            "mismatches": self.mismatches(),
        }

    def summary(self) -> dict:
        """W&B summary: `macs/<family>`, `fvcore/<family>`, `reconciled`."""
        totals = self.totals()
        return {**{f"macs/{k}": v["analytic"] for k, v in totals.items()},
                **{f"fvcore/{k}": v["fvcore"] for k, v in totals.items()
                   if v["fvcore"] is not None}, "reconciled": self.reconciled,
                **({"macs/attention_causal": self.report.totals(causal=True)["attention"]}
                   if self.report.has_causal() else {}),
                "params/total": self.report.params.get("total"),
                "params/trainable": self.report.params.get("trainable")}

    def tables(self) -> list[Table]:
        """`layers` (every counted op: layers.csv, the W&B table) and `totals` (per family)."""
        cols = ["path", "type", "op", "family", "in_shape", "out_shape", "mults", "adds", "macs",
                "fvcore", "match"]
        layers = Table("layers", cols, [[r[c] for c in cols] for r in self.layers()],
                       title=f"{self.model} {self.input_shape}: per op")
        return [layers, self.totals_table()]

    def rollup_table(self, depth: int, saved: Mapping | None = None) -> Table:
        """The module rollup to `depth` (rollup.csv, the W&B table); with `saved` (a
        MemoryReport's saved_by_module) a column of the bytes each subtree saves for
        backward."""
        cols = ["path", "depth", "type", "params", "macs", "bwd_macs", "bytes", "share"]
        roll = self.report.rollup(depth)
        rows = [[r.path or "<model>", r.depth, r.module_type, r.params, r.macs, r.bwd_macs,
                 r.bytes, r.share] for r in roll]
        if saved is not None:
            from dnnlab.opcount.memory_report import saved_rollup

            sums = saved_rollup(dict(saved), [r.path for r in roll])
            cols.append("saved_bytes")
            for row, r in zip(rows, roll):
                row.append(sums[r.path])
        return Table("rollup", cols, rows, title=f"{self.model}: per module to depth {depth}",
                     formats={c: "{:,}" for c in ("params", "macs", "bwd_macs", "bytes",
                                                  "saved_bytes")})

    def totals_table(self) -> Table:
        """MACs per family, dnnlab and fvcore."""
        rows = [[fam, v["analytic"], v["fvcore"],
                 None if v["fvcore"] is None else v["analytic"] == v["fvcore"]]
                for fam, v in self.totals().items()]
        return Table("totals", ["family", "dnnlab", "fvcore", "equal"], rows,
                     title=f"totals per family ({self.unit}; elementwise families: ops)",
                     formats={"dnnlab": "{:,}", "fvcore": "{:,}"})

    def per_layer_table(self) -> Table:
        """The MAC-family rows, as the terminal shows them."""
        rows = [[r["path"] or "<model>", f"{r['type']}/{r['op']}",
                 f"{'x'.join(map(str, r['in_shape']))} -> {'x'.join(map(str, r['out_shape']))}",
                 r["mults"], r["adds"], r["macs"], r["fvcore"], r["match"]]
                for r in self.layers() if r["family"] in MAC_FAMILIES]
        fmt = "{:,}"
        return Table("per_layer", ["layer", "type", "in -> out", "mults", "adds", "MACs",
                                   "fvcore", "match"], rows,
                     title=f"{self.model} {self.input_shape}: per layer",
                     formats={"mults": fmt, "adds": fmt, "MACs": fmt, "fvcore": fmt})

    def flop_counter_line(self) -> str:
        """The training step against torch's FlopCounterMode, in one line ('' if not run)."""
        fc = None if self.reconciliation is None else self.reconciliation.flop_counter
        if not fc:
            return ""
        if "device" not in fc:  # not run
            return fc["why"]
        bwd = (f", backward {fc['backward_flops_analytic']:,} / "
               f"{fc['backward_flops_torch']:,}" if "backward_flops_torch" in fc else "")
        return (f"vs torch FlopCounterMode on {fc['device']}: forward "
                f"{fc['forward_flops_analytic']:,} / {fc['forward_flops_torch']:,} flops{bwd}: "
                f"{'match' if fc['match'] else 'MISMATCH'} {fc['why']}".rstrip())

    def mode_line(self) -> str:
        """How the model was counted, and what was not counted (one line each)."""
        r = self.report
        lines = [f"counted on {r.mode}" + (f" ({r.mode_reason})" if r.mode_reason else "")
                 + f"; inputs: {r.inputs}"]
        if r.params:
            lines.append(f"parameters: {r.params['total']:,} ({r.params['trainable']:,} "
                         f"trainable); buffers: {r.buffers.get('total', 0):,} elements")
        if r.has_causal():
            dense, causal = r.totals()["attention"], r.totals(causal=True)["attention"]
            lines.append(f"attention: {dense:,} MACs dense (the default, as FlopCounterMode), "
                         f"{causal:,} causal (unmasked products only: totals(causal=True), "
                         f"{causal / dense:.3f} of dense)")
        if r.not_counted:
            lines.append("not counted (no rule): " + ", ".join(
                f"{op} ({', '.join(p)})" for op, p in r.not_counted.items()))
        if self.reconciliation is not None:
            lines.extend(self.reconciliation.skip_reasons)
        return "\n".join(lines)


def _requiring_grad(shape: list | None, inputs: Any) -> Any:
    """The inputs with every floating-point tensor requiring grad (meta: shapes only)."""
    args, kwargs = call_args(shape, inputs)

    def need(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        return torch.empty_like(t, device="meta").requires_grad_(True)

    args, kwargs = _map(args, need), _map(kwargs, need)
    if kwargs:
        return kwargs
    return args[0] if len(args) == 1 else args


def run(model: torch.nn.Module, input_shape: Sequence[int] | None = None, *,
        inputs: Any = None, name: str | None = None, count: CountSettings | None = None,
        training: bool = False, reconcile_counts: bool = True,
        unit: str = "MACs", reconcile_max_gb: float = 4.0) -> OpcountResult:
    """Count `model` on `input_shape` and, with `reconcile_counts`, compare with fvcore (and,
    with `count.backward`, a training step with FlopCounterMode).

    The model may be built on the meta device: it is given zero CPU weights for fvcore only
    when reconciling (`dnnlab.opcount.build.materialize`). Raises ShapeError naming the layer that
    cannot take the input.
    """
    from dnnlab.opcount.build import materialize

    require(unit in UNITS, "unit", unit, "expected MACs or FLOPs")
    count = count or CountSettings()
    shape = None if input_shape is None else [int(s) for s in input_shape]
    if count.input_grad:
        inputs, shape = _requiring_grad(shape, inputs), None
    report = count_ops(model, shape, inputs=inputs, count_bias=count.bias, name=name,
                       training=training)
    rec = None
    if reconcile_counts:
        rec = reconcile(materialize(model), shape, inputs=inputs, report=report,
                        backward=count.backward, max_gb=reconcile_max_gb)
    return OpcountResult(report, rec, count.backward, unit)
