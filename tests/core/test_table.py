"""dnnlab.core.table: one table rendered to markdown, CSV and the terminal; JSON-safe values."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from dnnlab.core import dtypes
from dnnlab.core.table import Table, jsonable


def test_table_renders_everywhere(tmp_path):
    t = Table("layers", ["layer", "macs", "ok", "shape", "beta"],
              [["features.0", 70_276_800, True, [1, 64, 55, 55], math.inf],
               ["a|b", 5, False, None, 0.123456]], title="AlexNet", formats={"macs": "{:,}"})
    md = t.to_markdown().splitlines()
    assert md[0] == "| layer | macs | ok | shape | beta |" and md[1] == "|---|---|---|---|---|"
    assert md[2] == "| features.0 | 70,276,800 | yes | 1x64x55x55 | inf |"
    assert md[3] == "| a\\|b | 5 | no |  | 0.1235 |"
    path = t.to_csv(tmp_path)
    rows = list(csv.reader(path.open()))
    assert rows[1] == ["features.0", "70276800", "True", "1x64x55x55", "inf"]
    rich = t.to_rich(max_rows=1)
    assert rich.row_count == 1 and "1 more rows" in rich.caption
    with pytest.raises(ValueError, match="cells"):
        Table("bad", ["a", "b"], [[1]])
    assert Table("f", ["x"], [[2.0]], formats={"x": lambda v: f"<{v}>"}).text_rows() == [["<2.0>"]]


def test_jsonable():
    assert jsonable({"a": [math.inf, -math.inf, math.nan, (1, 2)], 3: torch.tensor(2.5)}) == {
        "a": ["inf", "-inf", "nan", [1, 2]], "3": 2.5}
    assert jsonable(dtypes.DType.float16) == "float16"
