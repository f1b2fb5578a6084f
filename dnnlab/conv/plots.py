"""The conv topic's figure: matrix vs conv form, time and memory as n grows (log-log)."""
from __future__ import annotations

from pathlib import Path

from dnnlab.conv.scaling import log2_label
from dnnlab.core.plots import plt, save


def plot_scaling(result, path: Path) -> Path:
    """A ConvResult's scaling stage: time with reference slopes O(n^2) and O(n f)
    (docs/math.md (3b)), and the bytes each form holds; skipped matrix rows marked."""
    sc = result.scaling
    rows = sc["rows"]
    ns = [r["n"] for r in rows]
    timed = [r for r in rows if not r["matrix_skipped"]]
    skipped = [r for r in rows if r["matrix_skipped"]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    f = sc["filters"]
    ax.loglog([r["n"] for r in timed], [r["matrix_s"] for r in timed], "o-", c="tab:red",
              label="matrix form (A_w formed)")
    ax.loglog(ns, [r["conv_s"] for r in rows], "s-", c="tab:blue",
              label="conv form (docs/math.md (3b))")
    if timed:  # reference slopes anchored at the largest measured point
        r = timed[-1]
        ax.loglog(ns, [r["matrix_s"] * (n / r["n"]) ** 2 for n in ns], "--", c="tab:red",
                  alpha=0.4, label="O(n^2)")
    r = rows[-1]
    ax.loglog(ns, [r["conv_s"] * n / r["n"] for n in ns], "--", c="tab:blue", alpha=0.4,
              label=f"O(n f), f={f}")
    for r in skipped:
        ax.axvline(r["n"], c="grey", ls=":", lw=1)
    if skipped:
        at = ", ".join(log2_label(r["n"]) for r in skipped)
        ax.text(0.98, 0.02, f"matrix form skipped at n = {at}\n(A_w > "
                f"{sc['max_matrix_bytes'] / 1e9:.3g} GB)", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n = n_0")
    ax.set_ylabel("forward+backward time (s, median)")
    ax.set_title(f"time, {sc['dtype']}, batch {sc['batch']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    bx.loglog([r["n"] for r in timed], [r["matrix_bytes"] for r in timed], "o-", c="tab:red",
              label="matrix form: A_w + activations")
    if skipped:
        bx.loglog([r["n"] for r in skipped], [r["matrix_a_bytes"] for r in skipped], "o",
                  mfc="none", c="tab:red", label="matrix form (skipped): A_w would need")
    bx.loglog(ns, [r["conv_bytes"] for r in rows], "s-", c="tab:blue",
              label="conv form: activations")
    bx.axhline(sc["max_matrix_bytes"], c="grey", ls=":", lw=1, label="skip threshold")
    bx.set_xscale("log", base=2)
    bx.set_xlabel("n = n_0")
    bx.set_ylabel("bytes held after the forward pass")
    bx.set_title("memory")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3, which="both")
    fig.suptitle(f"the chain, f={f}: matrix form O(n^2) vs conv form O(n f)")
    return save(fig, path)
