"""The main job's conv section (dnnlab.conv.report) and the scaling plot, in-process."""
import math

from dnnlab.conv.experiment import ConvSettings
from dnnlab.conv.report import ReportSettings, report_section
from dnnlab.run.config import settings_of


def test_report_defaults_are_smaller_than_the_pipelines():
    fast, full = ReportSettings(), ConvSettings()  # the report's run is a short one of conv's
    assert fast.scaling.n_max_log2 < full.scaling.n_max_log2
    assert sum(math.prod(n.input_shape) for n in fast.real_nets) < sum(
        math.prod(n.input_shape) for n in full.real_nets)
    assert fast.chain == full.chain and fast.dtype == full.dtype  # the same checks, smaller


def test_report_section(tmp_path):
    s = settings_of(ReportSettings, {"real_nets": [], "gradcheck": True,
                                     "scaling": {"n_min_log2": 3, "n_max_log2": 6}}, "conv")
    sec = report_section(s, tmp_path)
    md = sec.markdown
    assert md.lstrip().startswith("## 3. Convolution backprop\n")
    assert "C_(v_2^T) y_1" in md and "v_3 . 1" in md and "matrix vs conv" in md
    assert "weight grad aten: passed, weight grad explicit: passed" in md
    assert "![matrix vs conv form](conv_scaling.png)" in md and "| 2^6 |" in md
    assert (tmp_path / "conv_scaling.png").stat().st_size > 10_000
    assert sec.images == {"conv/scaling": tmp_path / "conv_scaling.png"}
    assert sec.summary["conv/passed"] is True and "conv/crossover_n" in sec.summary
    assert [t.key for t in sec.tables] == ["conv/chain", "conv/scaling_summary"]
    assert "shared/" not in md and "seed" not in md.lower()
