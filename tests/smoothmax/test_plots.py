"""dnnlab.smoothmax.plots: the four figures of a small run, and the entries the softmax plot
shows."""
import math

import torch

from dnnlab.smoothmax.limits import BetaGrid, LimitsSettings, run
from dnnlab.smoothmax.plots import make_plots, shown_entries


def test_four_figures(tmp_path, drawn):
    s = LimitsSettings(n=20, inputs=["normal", "neg_inf"], dtype="float32", n_show=5,
                       beta=BetaGrid(min=0.1, max=100.0, num=3),
                       softmax_betas=[1, "inf"], softmax_input="neg_inf")
    pngs = make_plots(run(s), s, tmp_path, prefix="float32_")
    assert [p.name for p in pngs.values()] == [
        "float32_gap_vs_beta.png", "float32_grad_vs_beta.png",
        "float32_hessian_vs_beta.png", "float32_softmax_weights.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs.values())
    gap, grad, hess, soft = drawn()
    [ax] = gap.axes
    assert ax.get_xscale() == ax.get_yscale() == "log" and ax.get_xlabel() == "beta"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    # a line per input, float32 also the dotted float64 gaps, and the bound log(n)/beta
    assert {"normal", "neg_inf", "bound log(n)/beta"} <= set(lines)
    assert len([ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]) == 2
    bound = lines["bound log(n)/beta"]
    assert len(bound.get_xdata()) == 3  # the grid's finite betas
    for b, y in zip(bound.get_xdata(), bound.get_ydata()):
        assert math.isclose(y, math.log(20) / b, rel_tol=1e-12)  # docs/math.md (1a)
    for name in ("normal", "neg_inf"):  # every gap drawn is under its bound
        for b, g in zip(lines[name].get_xdata(), lines[name].get_ydata()):
            assert 0 < g <= math.log(20) / b * (1 + 1e-3)
    assert [a.get_ylabel() for a in grad.axes] == ["||grad nu_beta - e_argmax||_1",
                                                    "entropy of grad nu_beta (nats)"]
    [hax] = hess.axes
    half = {ln.get_label(): ln for ln in hax.get_lines()}["bound beta/2"]
    assert [y for y in half.get_ydata()] == [b / 2 for b in half.get_xdata()]  # (1d)
    assert len(soft.axes) == 2  # one panel per softmax beta
    for panel in soft.axes:
        assert len(panel.patches) == 5  # n_show bars
        assert 0 <= sum(p.get_height() for p in panel.patches) <= 1 + 1e-6


def test_shown_entries_follow_the_argmax():
    x = torch.zeros(100)
    x[3] = 1.0
    assert shown_entries(x, 10) == range(0, 10)  # the argmax is among the first ones
    x[3], x[57] = 0.0, 1.0
    assert shown_entries(x, 10) == range(52, 62)  # around it otherwise
    x[57], x[99] = 0.0, 1.0
    assert shown_entries(x, 10) == range(90, 100)  # clipped at the end
    assert shown_entries(x, 500) == range(0, 100)
