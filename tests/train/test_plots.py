"""dnnlab.train.plots: the temperature-sweep figure."""
from __future__ import annotations

import math

from dnnlab.train.plots import beta_key, plot_temperature_sweep


def _row(beta, acc=0.9, ent=0.5, status="done"):
    return {"beta": beta, "test_accuracy": acc, "grad_entropy": ent, "status": status}


def test_beta_key():
    assert beta_key(2) == 2.0 and beta_key("inf") == math.inf
    assert math.isnan(beta_key("learnable")) and math.isnan(beta_key(None))


def test_plot_with_inf_and_finite(tmp_path):
    rows = [_row("inf", 0.98, 0.3), _row(0.5, 0.83, 0.93), _row(2.0, 0.92, 0.66),
            _row("learnable"), _row(8.0, status="failed")]
    png = plot_temperature_sweep(rows, tmp_path / "s.png")
    assert png == tmp_path / "s.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert png.stat().st_size > 1000
    assert plot_temperature_sweep([_row("inf")], tmp_path / "inf.png").exists()


def test_nothing_to_plot(tmp_path):
    assert plot_temperature_sweep([_row(2.0, status="running"), _row("learnable")],
                                  tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
