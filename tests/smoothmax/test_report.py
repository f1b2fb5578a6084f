"""dnnlab.smoothmax.report: the report's section from typed settings (no Hydra)."""
import math

import pytest

from dnnlab.core.errors import ConfigError
from dnnlab.run.config import settings_of
from dnnlab.smoothmax.limits import LimitsSettings
from dnnlab.smoothmax.report import ReportSettings, report_section


def test_defaults_are_the_pipelines():
    assert settings_of(ReportSettings, {}, "smoothmax") == ReportSettings()
    assert vars(ReportSettings()) == vars(LimitsSettings())
    with pytest.raises(ConfigError, match=r"^smoothmax\.n=1:"):
        settings_of(ReportSettings, {"n": 1}, "smoothmax")


def test_report_section(tmp_path, drawn):
    s = settings_of(ReportSettings, {"n": 100, "beta": {"num": 10}}, "smoothmax")
    section = report_section(s, tmp_path)
    md = section.markdown
    assert section.title == "1. Smooth max"
    assert md.lstrip().startswith("## 1. Smooth max (docs/math.md (1a)-(1d))")
    assert "| claim of docs/math.md | measured | holds |" in md and "n = 100 entries" in md
    claims = [ln for ln in md.splitlines()
              if ln.startswith(("| (1a)", "| (1b)", "| (1c)", "| (1d)"))]
    assert len(claims) == 4 and all(ln.endswith("| yes |") for ln in claims), md
    per_input = [ln for ln in md.splitlines() if ln.startswith("| neg_inf |")]
    assert len(per_input) == 1
    for name in ("smoothmax_gap_vs_beta.png", "smoothmax_grad_vs_beta.png",
                 "smoothmax_hessian_vs_beta.png", "smoothmax_softmax_weights.png"):
        assert f"]({name})" in md and (tmp_path / name).is_file()
    gap, grad, hess, soft = drawn()  # the four figures of this run, n = 100 entries
    [ax] = gap.axes
    assert "n=100," in ax.get_title()
    bound = {ln.get_label(): ln for ln in ax.get_lines()}["bound log(n)/beta"]
    assert len(bound.get_xdata()) >= 9  # the finite betas of num=10
    assert list(bound.get_ydata()) == pytest.approx([math.log(100) / b
                                                     for b in bound.get_xdata()])
    assert len(grad.axes) == 2 and len(hess.axes) == 1 and soft.axes
    assert set(section.images) == {"smoothmax/gap_vs_beta", "smoothmax/grad_vs_beta",
                                   "smoothmax/hessian_vs_beta", "smoothmax/softmax_weights"}
    assert section.summary["smoothmax/hessian_holds"] is True
    assert section.summary["smoothmax/all_bounds_hold"] is True
    assert section.summary["smoothmax/grad_onehot_dist_monotone"] is True
    (table,) = section.tables
    assert table.key == "smoothmax/limits" and table.rows
