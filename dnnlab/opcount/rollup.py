"""The nested rollup (`OpReport.rollup(depth)`): per module subtree down to a depth, its
parameters, MACs, backward MACs, bytes and share of the total, as fvcore's
`flop_count_table(max_depth=)` and DeepSpeed's profile show it; and the same as a rich tree.
"""
from __future__ import annotations

from dataclasses import dataclass

from dnnlab.opcount.protocol import MAC_FAMILIES


@dataclass
class RollupRow:
    """One module subtree: everything counted inside it (its own ops and its children's)."""

    path: str  # "" for the model
    depth: int  # 0 for the model, 1 for its children, ...
    module_type: str
    params: int
    macs: int  # the MAC families (conv, linear, matmul, attention, recurrent)
    bwd_macs: int
    bytes: int  # forward read + write
    share: float  # macs / the model's MACs (0 when the model has none)


def _depth(path: str) -> int:
    return 0 if not path else path.count(".") + 1


def _ancestors(path: str) -> list:
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts) + 1)]


def rollup(report, depth: int) -> list[RollupRow]:
    """Subtrees down to `depth` (0: the model only), in module order; a module that is not in
    the model's tree (a row of a functional call) counts under its nearest ancestor."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"rollup depth must be an int >= 0, got {depth!r}")
    types = dict(report.module_types)
    paths = [p for p in (report.module_params or {"": 0}) if _depth(p) <= depth]
    sums = {p: [0, 0, 0] for p in paths}
    for row in report.layers:
        for a in _ancestors(row.path):
            if a in sums:
                s = sums[a]
                if row.family in MAC_FAMILIES:
                    s[0] += row.macs
                    s[1] += row.bwd_macs
                s[2] += row.read_bytes + row.write_bytes
            types.setdefault(a, row.module_type if a == row.path else "")
    total = sums[""][0] if "" in sums else 0
    return [RollupRow(p, _depth(p), types.get(p, ""), int(report.module_params.get(p, 0)),
                      m, b, n, m / total if total else 0.0) for p, (m, b, n) in sums.items()]


def rollup_tree(rows: list[RollupRow], title: str):
    """A rich Tree: one node per subtree, with params, MACs, backward MACs, bytes, share."""
    from rich.tree import Tree

    def label(r: RollupRow) -> str:
        name = r.path.rsplit(".", 1)[-1] if r.path else "<model>"
        return (f"{name} ({r.module_type}): params {r.params:,}, MACs {r.macs:,} "
                f"({100 * r.share:.1f}%), bwd {r.bwd_macs:,}, bytes {r.bytes:,}")

    tree = Tree(title)
    nodes = {}
    for r in rows:
        parent = nodes.get(r.path.rsplit(".", 1)[0] if "." in r.path else "", tree)
        nodes[r.path] = (tree if r.path == "" else parent).add(label(r))
    return tree
