"""The main job's conv section (dnnlab.conv.report) and the scaling plot, in-process."""
from dnnlab.conv.report import ReportSettings, report_section
from dnnlab.run.config import settings_of


def test_report_defaults_are_the_fast_ones():
    s = ReportSettings()
    assert [(n.name, n.input_shape) for n in s.real_nets] == [
        ("resnet18", [2, 3, 32, 32]), ("alexnet", [1, 3, 64, 64])]
    assert (s.scaling.n_min_log2, s.scaling.n_max_log2) == (3, 12)
    assert s.chain.spec().filters == [5, 3, 3] and s.batch == 4


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
