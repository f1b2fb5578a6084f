"""The counter's output: one `LayerRow` per counted operation, an `OpReport` with totals per
family and JSON/CSV export."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dnnlab.opcount.protocol import ELEMENTWISE_FAMILIES, FAMILIES, MAC_FAMILIES
from dnnlab.opcount.rollup import rollup as _rollup

__all__ = ["ELEMENTWISE_FAMILIES", "FAMILIES", "MAC_FAMILIES", "LayerRow", "OpReport"]

@dataclass
class LayerRow:
    """One counted operation.

    path: module path (`features.0`; `""` for the model itself); module_type: its class name;
    op: the torch function (`conv2d`, `linear`, `matmul`, ...); family: one of FAMILIES.
    mults/adds: counted separately by docs/math.md (2) (adds include the bias add when counted);
    macs: multiply-accumulates for MAC families, elementary operations otherwise;
    bwd_macs: MACs of this op's backward in a training step (input and weight gradients);
    bias_adds: the bias adds included in `adds`.
    """

    path: str
    module_type: str
    op: str
    family: str
    in_shape: list
    out_shape: list
    mults: int
    adds: int
    macs: int
    bwd_macs: int = 0
    bias_adds: int = 0
    other: int = 0  # comparisons, exp, ... (non-MAC families only)
    extra: dict = field(default_factory=dict)
    read_bytes: int = 0  # the forward's distinct input tensors, at their dtypes (traffic.py)
    write_bytes: int = 0  # its outputs
    bwd_bytes: int = 0  # the backward's: output gradient + saved inputs read, input grads
    dtype: str = ""  # the dtype of the call's first floating-point input ("float16", ...)
    causal_macs: int | None = None  # attention: the unmasked products only (None: dense exact)
    causal_bwd_macs: int | None = None

    @property
    def flops(self) -> int:
        """FLOPs: 2 per MAC for the MAC families, the elementary operations otherwise."""
        return 2 * self.macs if self.family in MAC_FAMILIES else self.macs

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: forward FLOPs per byte moved (0 when nothing is moved)."""
        moved = self.read_bytes + self.write_bytes
        return self.flops / moved if moved else 0.0


@dataclass
class OpReport:
    """The counted operations of one model on one input shape (`count_ops`'s result)."""

    model: str
    input_shape: list
    layers: list  # list[LayerRow]
    count_bias: bool = True
    training: bool = False
    inputs: str = ""  # what the model was called with: dtypes and shapes
    mode: str = "meta"  # "meta" (shapes only) or "cpu" (real tensors: data-dependent shapes)
    mode_reason: str = ""  # why the count ran on CPU
    not_counted: dict = field(default_factory=dict)  # op -> module paths: computes, no handler
    params: dict = field(default_factory=dict)  # {"total", "trainable"}: distinct tensors once
    buffers: dict = field(default_factory=dict)  # {"total", "tensors"}: not parameters
    module_params: dict = field(default_factory=dict)  # {path: params of its subtree}
    module_types: dict = field(default_factory=dict)  # {path: class name}

    def totals(self, backward: bool = False, causal: bool = False) -> dict:
        """MACs per operator family (always has the MAC families' keys, `conv` and `linear`).

        backward=True gives the backward MACs of a training step instead.
        causal=True counts masked attention's unmasked products only (`causal_macs`: is_causal
        and masks whose values the counter saw); the default is dense, FlopCounterMode's and
        fvcore's convention (docs/opcount.md "Causal attention").
        The `bias` family is the number of bias adds (already inside conv/linear `adds`).
        """
        out = {f: 0 for f in MAC_FAMILIES}
        for row in self.layers:
            out.setdefault(row.family, 0)
            if causal and row.causal_macs is not None:
                out[row.family] += row.causal_bwd_macs if backward else row.causal_macs
            else:
                out[row.family] += row.bwd_macs if backward else row.macs
            if not backward and row.bias_adds:
                out["bias"] = out.get("bias", 0) + row.bias_adds
        return out

    def total_macs(self, backward: bool = False, causal: bool = False) -> int:
        """Sum of the MAC families (forward, or backward when asked; causal: see totals)."""
        t = self.totals(backward, causal)
        return sum(t[f] for f in MAC_FAMILIES)

    def has_causal(self) -> bool:
        """Whether some attention was masked and counted exactly (`totals(causal=True)`
        differs from dense)."""
        return any(r.causal_macs is not None for r in self.layers)

    def total_bytes(self, backward: bool = False) -> int:
        """Bytes read + written by every counted op (forward, or backward when asked)."""
        if backward:
            return sum(r.bwd_bytes for r in self.layers)
        return sum(r.read_bytes + r.write_bytes for r in self.layers)

    def rollup(self, depth: int) -> list:
        """Per module subtree down to `depth`: params, MACs, backward MACs, bytes, share of
        the total MACs (`rollup.RollupRow`)."""
        return _rollup(self, depth)

    def by_module(self) -> dict:
        """{path: {family: macs}} summed over the ops run directly by each module."""
        out: dict = defaultdict(lambda: defaultdict(int))
        for row in self.layers:
            out[row.path][row.family] += row.macs
        return {k: dict(v) for k, v in out.items()}

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "count_bias": self.count_bias,
            "training": self.training,
            "inputs": self.inputs,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "not_counted": {k: list(v) for k, v in self.not_counted.items()},
            "params": dict(self.params),
            "buffers": dict(self.buffers),
            "layers": [asdict(r) for r in self.layers],
            "totals": self.totals(),
            "backward_totals": self.totals(backward=True),
            **({"causal_totals": self.totals(causal=True),
                "causal_backward_totals": self.totals(backward=True, causal=True)}
               if self.has_causal() else {}),
            "total_bytes": self.total_bytes(),
            "backward_bytes": self.total_bytes(backward=True),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, path: str | Path) -> None:
        cols = ["path", "module_type", "op", "family", "in_shape", "out_shape",
                "mults", "adds", "macs", "bwd_macs", "bias_adds", "other", "read_bytes",
                "write_bytes", "bwd_bytes", "causal_macs"]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in self.layers:
                d = asdict(r)
                w.writerow(["x".join(map(str, d[c])) if c.endswith("shape") else d[c]
                            for c in cols])
