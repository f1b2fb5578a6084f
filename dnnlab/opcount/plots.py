"""The op count's figure: MACs per layer, one bar per conv/linear/matmul/attention op."""
from __future__ import annotations

from pathlib import Path

from dnnlab.core.plots import plt, save
from dnnlab.opcount.rows import MAC_FAMILIES

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


def plot_roofline(roof, path: Path, title: str) -> Path:
    """Log-log: each op's intensity (FLOPs/byte) against its attained FLOP/s (FLOPs / its
    roofline seconds), coloured by bound, under the device's roofs (fp32 and the tensor one)."""
    import numpy as np

    pts = [r for r in roof.rows if r.flops > 0 and r.bytes > 0 and r.seconds > 0]
    fig, ax = plt.subplots(figsize=(7, 5))
    d = roof.device
    lo = min([r.intensity for r in pts] + [1e-2]) / 2
    hi = max([r.intensity for r in pts] + [1e4]) * 2
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    for prec, style in (("fp32", "-"), ("bf16-fp16", "--")):
        ax.plot(x, np.minimum(d.peak[prec], x * d.bandwidth), "k" + style, lw=1,
                label=f"{d.name} roof ({prec})")
    for bound, color in (("compute", "tab:red"), ("memory", "tab:blue")):
        sel = [r for r in pts if r.bound == bound]
        ax.scatter([r.intensity for r in sel], [r.flops / r.seconds for r in sel], s=12,
                   color=color, label=f"{bound}-bound ({len(sel)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs / byte)")
    ax.set_ylabel("attained FLOP/s")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)
