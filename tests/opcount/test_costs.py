"""The cost model's outputs in process (costs.py, measure.py): predicted against measured time
per leaf module on this CPU, and the pipeline's roofline/measured entries and pictures."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dnnlab.opcount import count_ops
from dnnlab.opcount.costs import cost_outputs
from dnnlab.opcount.measure import measure, plot_measured
from dnnlab.opcount.roofline import roofline


class Twice(nn.Module):
    """One leaf called twice in the forward: its time counts both calls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):  # (B, 64)
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))


def test_measure_times_every_counted_leaf_and_counts_its_calls():
    model = Twice()
    report = count_ops(model, [4, 64])
    m = measure(model, report, [4, 64], min_run_time=0.01, threads=1)
    rows = {r["path"]: r for r in m.rows}
    assert set(rows) == {"fc", "out"}  # the relus are functions, not leaf modules
    assert rows["fc"]["calls"] == 2 and rows["out"]["calls"] == 1
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in m.rows)
    assert rows["fc"]["predicted_s"] > rows["out"]["predicted_s"]  # 2 x 64x64 against 64x10
    assert m.spearman is None and m.median_ratio is None  # fewer than 3 layers: no rank
    d = m.to_dict()
    assert d["measured_s"] == pytest.approx(sum(r["measured_s"] for r in m.rows))


class Widths(nn.Module):
    """Linear layers of 64..2048 features side by side, each on its own input."""

    sizes = (64, 256, 1024, 2048)

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleDict({f"b{n}": nn.Linear(n, n) for n in self.sizes})

    def forward(self, xs):  # [(B, n) for n in sizes]
        return [self.layers[f"b{n}"](x) for n, x in zip(self.sizes, xs)]


def test_measured_ranks_follow_the_predicted_on_layers_of_very_different_cost(tmp_path, drawn):
    """The layers are 1,024x apart in MACs, so the measured order must be the predicted one."""
    net = Widths()
    inputs = ([torch.randn(8, n) for n in net.sizes],)
    m = measure(net, count_ops(net, inputs=inputs), inputs=inputs, min_run_time=0.02,
                threads=1)
    assert [r["path"] for r in m.rows] == [f"layers.b{n}" for n in net.sizes]
    pred = [r["predicted_s"] for r in m.rows]
    assert pred == sorted(pred) and m.spearman >= 0.8 and m.median_ratio > 0
    assert plot_measured(m, tmp_path / "m.png", "widths").is_file()
    [ax] = drawn()[0].axes  # a point per layer: (predicted, measured), and the diagonal
    assert ax.get_title() == f"widths: spearman {m.spearman:.3f}"
    [points] = ax.collections
    assert points.get_offsets().tolist() == [[r["predicted_s"], r["measured_s"]] for r in m.rows]
    [diagonal] = ax.get_lines()
    lo, hi = min(pred + [r["measured_s"] for r in m.rows]), max(
        pred + [r["measured_s"] for r in m.rows])
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [lo, hi]


def test_cost_outputs_roofline_and_measure_write_results_lines_and_pictures(tmp_path, drawn):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.Flatten(), nn.Linear(8 * 14 * 14, 32), nn.Linear(32, 10))
    report = count_ops(model, [1, 3, 16, 16])
    out = cost_outputs(model, report, tmp_path, name="small", device="l4", measure=True,
                       input_shape=[1, 3, 16, 16], min_run_time=0.01)
    assert set(out.results) >= {"roofline", "measured"}
    roof = out.results["roofline"]
    assert roof["compute_bound"] + roof["memory_bound"] == len(report.layers)
    meas = out.results["measured"]
    assert [r["path"] for r in meas["rows"]] == ["0", "1", "2", "4", "5"]  # Flatten counts nothing
    assert -1 <= meas["spearman"] <= 1
    json.dumps(out.results)  # results.json can hold it
    assert out.lines[0].startswith("roofline on l4: ") and "spearman" in out.lines[1]
    for key, name in [("roofline", "roofline.png"), ("measured", "measured.png")]:
        assert out.images[key] == tmp_path / name and (tmp_path / name).is_file()
    roof_fig, meas_fig = drawn()  # the roofline's points and the measured ones, one per row
    n_points = sum(len(c.get_offsets()) for c in roof_fig.axes[0].collections)
    assert n_points == len([r for r in roofline(report, "l4").rows
                            if r.flops > 0 and r.bytes > 0 and r.seconds > 0]) > 0
    [points] = meas_fig.axes[0].collections
    assert points.get_offsets().tolist() == [[r["predicted_s"], r["measured_s"]]
                                             for r in meas["rows"]]
    if not torch.cuda.is_available():
        assert "measured_cuda" not in out.results


def test_cost_outputs_without_a_device_or_measure_is_empty(tmp_path):
    report = count_ops(nn.Linear(4, 4), [1, 4])
    out = cost_outputs(nn.Linear(4, 4), report, tmp_path, name="x", device=None, measure=False)
    assert out.results == {} and out.lines == [] and out.images == {}
    assert list(tmp_path.iterdir()) == []
