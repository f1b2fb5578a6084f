"""dnnlab.opcount.plots: the per-layer bar chart of an OpcountResult."""
from __future__ import annotations

from torch import nn

from dnnlab.opcount.experiment import run
from dnnlab.opcount.plots import COLORS, bar_per_layer, plot_per_layer


def test_plot_per_layer_writes_a_png(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    result = run(model, [1, 1, 8, 8], name="tiny", reconcile_counts=False)
    png = plot_per_layer(result, tmp_path / "per_layer.png")
    assert png == tmp_path / "per_layer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_bar_per_layer_takes_any_labels(tmp_path):
    png = bar_per_layer(["a", "b"], [3, 5], [COLORS["conv"], COLORS["linear"]], "t",
                        tmp_path / "b.png", ylabel="ops")
    assert png.stat().st_size > 1000
