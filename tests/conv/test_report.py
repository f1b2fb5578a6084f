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


def test_report_section(tmp_path, drawn):
    s = settings_of(ReportSettings, {"real_nets": [], "gradcheck": True,
                                     "scaling": {"n_min_log2": 3, "n_max_log2": 6}}, "conv")
    sec = report_section(s, tmp_path)
    md = sec.markdown
    assert md.lstrip().startswith("## 3. Convolution backprop\n")
    assert "C_(v_2^T) y_1" in md and "v_3 . 1" in md and "matrix vs conv" in md
    assert "weight grad aten: passed, weight grad explicit: passed" in md
    assert "![matrix vs conv form](conv_scaling.png)" in md and "| 2^6 |" in md
    assert (tmp_path / "conv_scaling.png").is_file()
    [fig] = drawn()
    time_ax, memory_ax = fig.axes[:2]
    assert time_ax.get_title().startswith("time") and memory_ax.get_title() == "memory"
    lines = {ln.get_label(): ln for ln in time_ax.get_lines()}
    ns = [2 ** k for k in range(3, 7)]  # n_min_log2 .. n_max_log2
    conv = lines["conv form (docs/math.md (3b))"]
    assert list(conv.get_xdata()) == ns and all(t > 0 for t in conv.get_ydata())
    assert list(lines["matrix form (A_w formed)"].get_xdata()) == ns  # none skipped at n <= 64
    mem = {ln.get_label(): ln for ln in memory_ax.get_lines()}
    assert list(mem["conv form: activations"].get_xdata()) == ns
    assert sec.images == {"conv/scaling": tmp_path / "conv_scaling.png"}
    assert sec.summary["conv/passed"] is True and "conv/crossover_n" in sec.summary
    assert [t.key for t in sec.tables] == ["conv/chain", "conv/scaling_summary"]
    assert "shared/" not in md and "seed" not in md.lower()
