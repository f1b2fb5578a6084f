"""The op count's figure: MACs per layer, one bar per conv/linear/matmul/attention op."""
from __future__ import annotations

from pathlib import Path

from dnnlab.opcount.rows import MAC_FAMILIES
from dnnlab.plots import plt, save

COLORS = {"conv": "tab:blue", "linear": "tab:orange", "matmul": "tab:green",
          "attention": "tab:red"}


def bar_per_layer(labels: list[str], values: list[int], colors: list[str], title: str,
                  path: Path, ylabel: str = "MACs") -> Path:
    """A bar per label, its value on a linear axis, saved as PNG at `path`."""
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), values, color=colors)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def plot_per_layer(result, path: Path) -> Path:
    """MACs of every MAC-family op of an `OpcountResult`, coloured by family."""
    rows = [r for r in result.layers() if r["family"] in MAC_FAMILIES]
    return bar_per_layer([r["path"] or r["op"] for r in rows], [r["macs"] for r in rows],
                         [COLORS[r["family"]] for r in rows],
                         f"{result.model} {result.input_shape}: MACs per layer", path)
