"""dnnlab.opcount.plots: the per-layer bar chart of an OpcountResult, read from its figure."""
from __future__ import annotations

from matplotlib.colors import to_hex
from torch import nn

from dnnlab.opcount.experiment import run
from dnnlab.opcount.plots import COLORS, bar_per_layer, plot_per_layer


def test_plot_per_layer_draws_a_bar_per_mac_layer(tmp_path, drawn):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    result = run(model, [1, 1, 8, 8], name="tiny", reconcile_counts=False)
    png = plot_per_layer(result, tmp_path / "per_layer.png")
    assert png == tmp_path / "per_layer.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [fig] = drawn()
    [ax] = fig.axes
    bars = ax.patches
    # docs/math.md (2), from plain arithmetic: conv 1*3*3 * 4*6*6, linear 144*10
    assert [b.get_height() for b in bars] == [1 * 9 * 4 * 36, 144 * 10]
    assert [to_hex(b.get_facecolor()) for b in bars] == [to_hex(COLORS["conv"]),
                                                         to_hex(COLORS["linear"])]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2"]
    assert ax.get_ylabel() == "MACs" and ax.get_title().startswith("tiny [1, 1, 8, 8]")


def test_bar_per_layer_takes_any_labels(tmp_path, drawn):
    bar_per_layer(["a", "b"], [3, 5], [COLORS["conv"], COLORS["linear"]], "t",
                  tmp_path / "b.png", ylabel="ops")
    [ax] = drawn()[0].axes
    assert [b.get_height() for b in ax.patches] == [3, 5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert ax.get_ylabel() == "ops" and ax.get_title() == "t"
