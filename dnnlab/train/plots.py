"""The temperature sweep's figure: test accuracy and the pooling's gradient entropy against beta
(docs/math.md (1c): softmax(beta x) concentrates on the argmax as beta grows)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dnnlab.beta import to_float
from dnnlab.errors import ConfigError
from dnnlab.plots import plt, save


def beta_key(b: Any) -> float:
    """A row's beta as a number for sorting and plotting: inf for "inf", NaN for "learnable"."""
    try:
        return to_float(b)
    except ConfigError:
        return math.nan


def plot_temperature_sweep(rows: list[dict], path: Path) -> Path | None:
    """Rows {beta, test_accuracy, grad_entropy, status} -> a PNG at `path` (beta on a log axis,
    inf drawn at 4x the largest finite beta); None when no finished row has a numeric beta."""
    num = [r for r in rows if r["status"] == "done" and not math.isnan(beta_key(r["beta"]))]
    if not num:
        return None
    finite = [beta_key(r["beta"]) for r in num if math.isfinite(beta_key(r["beta"]))]
    x_inf = (max(finite) * 4) if finite else 1.0
    num.sort(key=lambda r: beta_key(r["beta"]))
    xs = [beta_key(r["beta"]) if math.isfinite(beta_key(r["beta"])) else x_inf for r in num]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(xs, [r["test_accuracy"] for r in num], "o-", color="tab:blue", label="test accuracy")
    ax1.set_xscale("log")
    ax1.set_xlabel("beta (inverse temperature of the smooth-max pooling)")
    ax1.set_ylabel("test accuracy", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [r["grad_entropy"] for r in num], "s--", color="tab:red",
             label="entropy of softmax(beta x) / log n")
    ax2.set_ylabel("pooling gradient entropy / log(n)", color="tab:red")
    ax2.set_ylim(-0.05, 1.05)
    ticks = sorted(set(xs))
    has_inf = beta_key(num[-1]["beta"]) == math.inf  # num is sorted: inf comes last
    ax1.set_xticks(ticks)
    ax1.set_xticklabels(["inf" if has_inf and t == x_inf else f"{t:g}" for t in ticks])
    ax1.set_title("Temperature sweep: accuracy and pooling-gradient entropy vs beta "
                  "(docs/math.md (1c))")
    ax1.grid(alpha=0.3)
    return save(fig, path)
