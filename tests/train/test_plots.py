"""dnnlab.train.plots: the temperature-sweep figure, read from the figure it draws."""
from __future__ import annotations

import math

from dnnlab.train.plots import beta_key, plot_temperature_sweep


def _row(beta, acc=0.9, ent=0.5, status="done"):
    return {"beta": beta, "test_accuracy": acc, "grad_entropy": ent, "status": status}


def test_beta_key():
    assert beta_key(2) == 2.0 and beta_key("inf") == math.inf
    assert math.isnan(beta_key("learnable")) and math.isnan(beta_key(None))


def test_plot_with_inf_and_finite(tmp_path, drawn):
    rows = [_row("inf", 0.98, 0.3), _row(0.5, 0.83, 0.93), _row(2.0, 0.92, 0.66),
            _row("learnable"), _row(8.0, status="failed")]
    png = plot_temperature_sweep(rows, tmp_path / "s.png")
    assert png == tmp_path / "s.png" and png.read_bytes()[:4] == b"\x89PNG"
    [fig] = drawn()
    acc, ent = fig.axes  # accuracy on the left axis, the entropy on its twin
    assert acc.get_xscale() == "log" and acc.get_xlabel().startswith("beta")
    assert acc.get_ylabel() == "test accuracy" and "entropy" in ent.get_ylabel()
    # the finished rows with a numeric beta, sorted by beta; inf placed at 4x the largest (2.0)
    [acc_line] = [ln for ln in acc.get_lines() if ln.get_linestyle() == "-"]
    assert list(acc_line.get_xdata()) == [0.5, 2.0, 8.0]
    assert list(acc_line.get_ydata()) == [0.83, 0.92, 0.98]
    [ent_line] = [ln for ln in ent.get_lines() if ln.get_linestyle() == "--"]
    assert list(ent_line.get_ydata()) == [0.93, 0.66, 0.3] and ent.get_ylim() == (-0.05, 1.05)
    assert [t.get_text() for t in acc.get_xticklabels()] == ["0.5", "2", "inf"]


def test_only_inf_is_drawn_at_one(tmp_path, drawn):
    assert plot_temperature_sweep([_row("inf")], tmp_path / "inf.png").exists()
    [fig] = drawn()
    [line] = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "-"]
    assert list(line.get_xdata()) == [1.0]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["inf"]


def test_nothing_to_plot(tmp_path, drawn):
    assert plot_temperature_sweep([_row(2.0, status="running"), _row("learnable")],
                                  tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists() and drawn() == []
