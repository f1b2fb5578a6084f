"""The temperature sweep's figure: test accuracy and the pooling's gradient entropy against beta
(docs/math.md (1c): softmax(beta x) concentrates on the argmax as beta grows)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dnnlab.core.beta import to_float
from dnnlab.core.errors import ConfigError
from dnnlab.core.plots import plt, save


def beta_key(b: Any) -> float:
    """A row's beta as a number for sorting and plotting: inf for "inf", NaN for "learnable"."""
    try:
        return to_float(b)
    except ConfigError:
        return math.nan


def plot_temperature_sweep(rows: list[dict], path: Path,
                           groups: list[dict] | None = None) -> Path | None:
    """Rows {beta, test_accuracy, grad_entropy, status} -> a PNG at `path` (beta on a log axis,
    inf drawn at 4x the largest finite beta); None when no finished row has a numeric beta.
    With `groups` (dnnlab.train.groups: one per beta, its seeds the replicates) the lines join
    the means, with their 95% intervals as error bars, and every seed is a faint dot."""
    num = [r for r in rows if r["status"] == "done" and not math.isnan(beta_key(r["beta"]))]
    if not num:
        return None
    finite = [beta_key(r["beta"]) for r in num if math.isfinite(beta_key(r["beta"]))]
    x_inf = (max(finite) * 4) if finite else 1.0
    place = lambda b: beta_key(b) if math.isfinite(beta_key(b)) else x_inf  # noqa: E731
    means = _means(num, groups)
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax2 = ax1.twinx()
    for ax, metric, style, color, label in (
            (ax1, "test_accuracy", "o-", "tab:blue", "test accuracy"),
            (ax2, "grad_entropy", "s--", "tab:red", "entropy of softmax(beta x) / log n")):
        pts = [(place(b), m[metric]) for b, m in means if metric in m]
        if len(means) < len(num):  # replicates: every seed, then the means with intervals
            ax.plot([place(r["beta"]) for r in num], [r[metric] for r in num], ".",
                    color=color, alpha=0.3)
        if pts:
            xs = [x for x, _ in pts]
            ys = [s["mean"] for _, s in pts]
            err = [[s["mean"] - s["ci95"][0] if s.get("ci95") else 0 for _, s in pts],
                   [s["ci95"][1] - s["mean"] if s.get("ci95") else 0 for _, s in pts]]
            ax.errorbar(xs, ys, yerr=err, fmt=style, color=color, capsize=3, label=label)
    ax1.set_xscale("log")
    ax1.set_xlabel("beta (inverse temperature of the smooth-max pooling)")
    ax1.set_ylabel("test accuracy" + (" (mean, 95% CI)" if len(means) < len(num) else ""),
                   color="tab:blue")
    ax2.set_ylabel("pooling gradient entropy / log(n)", color="tab:red")
    ax2.set_ylim(-0.05, 1.05)
    xs_all = [place(r["beta"]) for r in num]
    ticks = sorted(set(xs_all))
    has_inf = any(beta_key(r["beta"]) == math.inf for r in num)
    ax1.minorticks_off()
    ax1.set_xticks(ticks)
    ax1.set_xticklabels(["inf" if has_inf and t == x_inf else f"{t:g}" for t in ticks])
    n = {len(g["jobs"]) for g in groups or []}
    seeds = f", {'/'.join(map(str, sorted(n)))} seeds per beta" if len(means) < len(num) else ""
    ax1.set_title(f"Temperature sweep: accuracy and gradient entropy vs beta{seeds} "
                  "(docs/math.md (1c))", fontsize=9)
    ax1.grid(alpha=0.3)
    return save(fig, path)


def _means(num: list[dict], groups: list[dict] | None) -> list[tuple[Any, dict]]:
    """[(beta, {metric: {mean, ci95}})] sorted by beta: the groups' statistics when every
    group differs only in beta (each placed at its jobs' beta), else one point per row."""
    beta_of = {r["job"]: r["beta"] for r in num if "job" in r}
    betas = [beta_of.get(g["jobs"][0]) for g in groups or []]
    if groups and set(groups[0]["key"]) == {"model.pool.beta"} and None not in betas:
        out = [(b, g["metrics"]) for b, g in zip(betas, groups)]
    else:
        out = [(r["beta"], {m: {"mean": r[m]} for m in ("test_accuracy", "grad_entropy")
                            if r.get(m) is not None}) for r in num]
    return sorted(out, key=lambda bm: beta_key(bm[0]))
