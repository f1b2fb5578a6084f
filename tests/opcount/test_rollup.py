"""OpReport.rollup(depth): per subtree params, MACs, backward MACs, bytes and share."""
from __future__ import annotations

import pytest
import torchvision
from torch import nn

from dnnlab.opcount import count_ops
from dnnlab.opcount.rollup import rollup_tree


def test_rollup_of_resnet18_sums_its_subtrees():
    model = torchvision.models.resnet18()
    report = count_ops(model, [1, 3, 64, 64])
    top = {r.path: r for r in report.rollup(1)}
    assert list(top) == ["", "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                         "layer4", "avgpool", "fc"]
    assert top[""].params == 11_689_512 and top[""].macs == report.total_macs()
    assert top[""].bwd_macs == report.total_macs(backward=True) and top[""].share == 1.0
    assert top[""].bytes == report.total_bytes()
    children = [r for p, r in top.items() if p]
    assert sum(r.params for r in children) == top[""].params
    assert sum(r.macs for r in children) == top[""].macs
    assert sum(r.bytes for r in children) == top[""].bytes
    assert top["layer1"].params == sum(p.numel() for p in model.layer1.parameters())
    assert top["conv1"].macs == 64 * 32 * 32 * 3 * 49 and top["layer1"].module_type == "Sequential"
    deeper = report.rollup(2)
    assert {r.path for r in deeper} > set(top) and max(r.depth for r in deeper) == 2
    assert {r.path: r.macs for r in deeper}["layer1.0"] == sum(
        r.macs for r in report.layers if r.path.startswith("layer1.0.") and r.family == "conv")
    assert [r.path for r in report.rollup(0)] == [""]
    with pytest.raises(ValueError, match="depth"):
        report.rollup(-1)


def test_rollup_tree_nests_the_subtrees():
    from rich.console import Console

    report = count_ops(nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 2)),
                       [3, 4])
    console = Console(width=200, record=True)
    console.print(rollup_tree(report.rollup(2), "model"))
    text = console.export_text()
    lines = text.splitlines()
    assert lines[1] == ("└── <model> (Sequential): params 58, MACs 144 (100.0%), bwd 192, "
                        "bytes 688")
    # the inner Linear under the inner Sequential (deeper), the outer Linear beside it
    inner = 4 * (12 + 32 + 8) + 4 * 24  # float32: reads X (3x4), W (8x4), b (8); writes 3x8
    assert lines[3] == f"    │   ├── 0 (Linear): params 40, MACs 96 (66.7%), bwd 96, bytes {inner}"
    assert lines[5] == "    └── 1 (Linear): params 18, MACs 48 (33.3%), bwd 96, bytes 192"
