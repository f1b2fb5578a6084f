"""dnnlab.opcount.report: the section of report.md, AlexNet against docs/math.md (2)."""
from __future__ import annotations

import pytest

from dnnlab.core.errors import ConfigError
from dnnlab.opcount.report import CLAIM, ReportSettings, report_section
from dnnlab.run.config import settings_of


def test_report_settings():
    with pytest.raises(ConfigError, match=r"^models\[1\]='alexnett'"):
        ReportSettings(models=["alexnet", "alexnett"])
    with pytest.raises(ConfigError, match=r"^models=\[\]"):
        ReportSettings(models=[])
    with pytest.raises(ConfigError, match=r"^opcount\.models"):
        settings_of(ReportSettings, {"models": "alexnet"}, "opcount")


def test_report_section_on_alexnet(tmp_path, drawn):
    section = report_section(ReportSettings(models=["alexnet"]), tmp_path)
    md = section.markdown
    assert md.startswith("\n## 2. Counting operations (docs/math.md (2))\n")
    assert "| AlexNet conv: mults = adds = 655,566,528 | 655,566,528 | 655,566,528 | yes |" in md
    assert "| AlexNet linear: mults = adds = 58,621,952 | 58,621,952 | 58,621,952 | yes |" in md
    assert ("| features.0 | conv2d | 1x3x224x224 -> 1x64x55x55 | 70,276,800 | 70,276,800 | "
            "70,276,800 |") in md
    assert "| alexnet | 655,566,528 / 655,566,528 | 58,621,952 / 58,621,952 | 0 | match |" in md
    png = section.images["opcount/per_layer"]
    assert png == tmp_path / "opcount_alexnet_per_layer.png" and png.is_file()
    [ax] = drawn()[0].axes  # a bar per conv and linear layer, its height the layer's MACs
    assert [b.get_height() for b in ax.patches][:1] == [70_276_800]
    assert len(ax.patches) == 8 and sum(b.get_height() for b in ax.patches) == (
        655_566_528 + 58_621_952)
    assert ax.get_title().lower().startswith("alexnet") and "MACs per layer" in ax.get_title()
    assert f"![MACs per layer]({png.name})" in md
    assert section.summary == {"opcount/alexnet/reconciled": True}
    claims = section.tables[0]
    assert [r[1] for r in claims.rows] == [CLAIM["conv"], CLAIM["linear"]]
    assert len(section.tables[1].rows) == 8  # 5 convs, 3 linears
