"""dnnlab.core.plots: headless figures saved as PNG, the figure as it was drawn."""
from __future__ import annotations

import matplotlib

from dnnlab.core import plots


def test_save_writes_the_figure_as_drawn(tmp_path, drawn):
    assert matplotlib.get_backend().lower() == "agg"  # headless: no display needed
    fig, ax = plots.plt.subplots()
    ax.plot([0, 1], [1, 0], label="down")
    ax.set_xlabel("x")
    path = plots.save(fig, tmp_path / "x.png")
    assert path == tmp_path / "x.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [saved] = drawn()
    assert saved is fig and saved.axes[0].get_xlabel() == "x"
    [line] = saved.axes[0].get_lines()
    assert list(line.get_xdata()) == [0, 1] and list(line.get_ydata()) == [1, 0]
    width, height = (int.from_bytes(path.read_bytes()[i:i + 4], "big") for i in (16, 20))
    w_in, h_in = fig.get_size_inches()
    assert (width, height) == (round(w_in * 110), round(h_in * 110))  # one dpi for every PNG
