"""dnnlab.opcount.rows: OpReport's totals and its JSON and CSV exports."""
from __future__ import annotations

import json

import torchvision

from dnnlab.opcount import count_ops


def test_exports(tmp_path):
    report = count_ops(torchvision.models.alexnet(), [1, 3, 224, 224])
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert data["totals"]["conv"] == 655_566_528
    assert data["layers"][0]["path"] == "features.0"
    report.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("path,module_type,op,family") and len(lines) == 1 + len(
        report.layers)
    assert lines[1].startswith("features.0,Conv2d,conv2d,conv,1x3x224x224,1x64x55x55,70276800")


