"""dnnlab.smoothmax.plots: the four figures of a small run, and the entries the softmax plot
shows."""
import torch

from dnnlab.smoothmax.limits import BetaGrid, LimitsSettings, run
from dnnlab.smoothmax.plots import make_plots, shown_entries


def test_four_pngs(tmp_path):
    for dtype in ("float32",):  # float32 also draws the dotted float64 gaps
        s = LimitsSettings(n=20, inputs=["normal", "neg_inf"], dtype=dtype, n_show=5,
                           beta=BetaGrid(min=0.1, max=100.0, num=3),
                           softmax_betas=[1, "inf"], softmax_input="neg_inf")
        pngs = make_plots(run(s), s, tmp_path, prefix=f"{dtype}_")
        assert [p.name for p in pngs.values()] == [
            f"{dtype}_gap_vs_beta.png", f"{dtype}_grad_vs_beta.png",
            f"{dtype}_hessian_vs_beta.png", f"{dtype}_softmax_weights.png"]
        assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 1000
                   for p in pngs.values())


def test_shown_entries_follow_the_argmax():
    x = torch.zeros(100)
    x[3] = 1.0
    assert shown_entries(x, 10) == range(0, 10)  # the argmax is among the first ones
    x[3], x[57] = 0.0, 1.0
    assert shown_entries(x, 10) == range(52, 62)  # around it otherwise
    x[57], x[99] = 0.0, 1.0
    assert shown_entries(x, 10) == range(90, 100)  # clipped at the end
    assert shown_entries(x, 500) == range(0, 100)
