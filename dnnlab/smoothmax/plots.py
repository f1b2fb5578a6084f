"""The figures of the smooth-max limits (docs/math.md (1a)-(1d)): gap and bound against beta,
the gradient's distance to the one-hot and its entropy, the Hessian's norm against its bound,
and the softmax weights of one input."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from dnnlab.core.plots import plt, save
from dnnlab.smoothmax.limits import INF, LimitsResult, LimitsSettings, make_input, nu_and_grad


def _by_input(result: LimitsResult, key: str) -> dict:
    """input -> (finite betas, the rows' `key` at them)."""
    rows = [r for r in result.rows if r["beta"] != INF]
    return {name: ([r["beta"] for r in rows if r["input"] == name],
                   [r[key] for r in rows if r["input"] == name]) for name in result.inputs}


def _positive(xs, ys):
    """The points with y > 0 (a log axis cannot draw 0)."""
    pts = [(a, b) for a, b in zip(xs, ys) if b is not None and b > 0]
    return [a for a, _ in pts], [b for _, b in pts]


def plot_gap(result: LimitsResult, path: Path) -> Path:
    """docs/math.md (1a): nu_beta - max x and the bound log(n)/beta against beta, log-log."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    f64 = _by_input(result, "gap_f64")
    for k, (name, (b, g)) in enumerate(_by_input(result, "gap").items()):
        ax.loglog(*_positive(b, g), marker="o", ms=3, color=f"C{k}", label=name)
        if result.dtype != "float64":
            ax.loglog(*_positive(*f64[name]), ":", lw=1, color=f"C{k}")
    betas = [b for b in result.betas if b != INF]
    ax.loglog(betas, [math.log(result.n) / b for b in betas], "k--", lw=1.5,
              label="bound log(n)/beta")
    ax.set_xlabel("beta")
    ax.set_ylabel("gap = nu_beta(x) - max x")
    extra = "; dotted: float64" if result.dtype != "float64" else ""
    ax.set_title(f"(1a): 0 <= gap <= log(n)/beta, n={result.n:,}, {result.dtype}"
                 f"\n(gap 0 not drawn; gap = 0 at beta = inf{extra})", fontsize=9)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_grad(result: LimitsResult, path: Path) -> Path:
    """docs/math.md (1c): ||grad nu_beta - e||_1 and the entropy of grad nu_beta against beta."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    ents = _by_input(result, "grad_entropy")
    for k, (name, (b, d)) in enumerate(_by_input(result, "grad_onehot_dist").items()):
        ax.loglog(*_positive(b, d), marker="o", ms=3, color=f"C{k}", label=name)
        ax2.semilogx(*ents[name], marker="o", ms=3, color=f"C{k}", label=name)
    ax.set_xlabel("beta")
    ax.set_ylabel("||grad nu_beta - e_argmax||_1")
    ax.set_title("(1c): grad nu_beta -> e_argmax (ties: 1/k each)\n(0 not drawn; 0 at "
                 "beta = inf)", fontsize=9)
    ax2.axhline(math.log(result.n), color="k", ls="--", lw=1, label="log n")
    ax2.set_xlabel("beta")
    ax2.set_ylabel("entropy of grad nu_beta (nats)")
    ax2.set_title("entropy: log n (uniform) -> log k (k tied maxima)", fontsize=9)
    for a in (ax, ax2):
        a.grid(which="both", alpha=0.3)
        a.legend(fontsize=7)
    return save(fig, path)


def plot_hessian(result: LimitsResult, path: Path) -> Path:
    """docs/math.md (1d): the largest eigenvalue of the Hessian of nu_beta against beta, and the
    bound beta / 2: it vanishes for a unique max and grows like beta / k with k tied maxima."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for k, (name, (b, h)) in enumerate(_by_input(result, "hessian_norm").items()):
        ax.loglog(*_positive(b, h), marker="o", ms=3, color=f"C{k}", label=name)
    betas = [b for b in result.betas if b != INF]
    ax.loglog(betas, [b / 2 for b in betas], "k--", lw=1.5, label="bound beta/2")
    ax.set_ylim(1e-8, max(betas))  # a unique max: the norm falls like exp(-beta gap), off scale
    ax.set_xlabel("beta")
    ax.set_ylabel("||hess nu_beta||_2 (largest eigenvalue)")
    ax.set_title("(1d): hess nu_beta = beta (diag(mu) - mu mu^T) <= beta/2; -> 0 for a unique "
                 f"max,\n~ beta/k for k tied maxima (the {result.hessian_n} largest entries; "
                 "below 1e-8 not drawn)", fontsize=9)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def shown_entries(x: torch.Tensor, n_show: int) -> range:
    """The first n_show entries, or n_show entries around the argmax when it is not among them."""
    n, k = x.numel(), min(n_show, x.numel())
    i = int(torch.argmax(x.double()))
    start = 0 if i < k else min(max(0, i - k // 2), n - k)
    return range(start, start + k)


def plot_softmax(x: torch.Tensor, name: str, betas: list, n_show: int, path: Path) -> Path:
    """docs/math.md (1b), (1c): the weights grad nu_beta = softmax(beta x) of one input x (n,)
    at several beta."""
    idx = shown_entries(x, n_show)
    argmax = int(torch.argmax(x.double()))
    fig, axes = plt.subplots(1, len(betas), figsize=(2.8 * len(betas) + 1, 3.3), squeeze=False)
    for ax, beta in zip(axes[0], betas):
        p = nu_and_grad(x, beta)[1].double()  # (n,)
        h = -torch.special.xlogy(p, p).sum().item() + 0.0
        w = [p[i].item() for i in idx]
        ax.bar(list(idx), w, color=["tab:red" if i == argmax else "tab:blue" for i in idx])
        ax.axhline(1 / x.numel(), color="k", ls=":", lw=1)  # the uniform weight 1/n (beta -> 0)
        ax.set_title(f"beta = {beta:g}\nentropy {h:.3g} nats", fontsize=9)
        ax.set_xlabel("entry i")
        ax.set_ylim(0, 1.15 * max(max(w), 1 / x.numel()))  # each panel its own scale
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("softmax(beta x)_i")
    fig.suptitle(f"grad nu_beta = softmax(beta x) ((1b) at beta = 1, (1c)): '{name}', entries "
                 f"{idx.start}..{idx.stop - 1} of {x.numel():,} (red: argmax; dotted: 1/n; "
                 "own y scale per panel)", fontsize=10)
    return save(fig, path)


def make_plots(result: LimitsResult, settings: LimitsSettings, out: Path,
               prefix: str = "") -> dict[str, Path]:
    """gap_vs_beta, grad_vs_beta, hessian_vs_beta and softmax_weights as <prefix><name>.png."""
    s = settings
    x = make_input(s.softmax_input, s.n, s.torch_dtype, s.seed)
    return {
        "gap_vs_beta": plot_gap(result, out / f"{prefix}gap_vs_beta.png"),
        "grad_vs_beta": plot_grad(result, out / f"{prefix}grad_vs_beta.png"),
        "hessian_vs_beta": plot_hessian(result, out / f"{prefix}hessian_vs_beta.png"),
        "softmax_weights": plot_softmax(x, s.softmax_input.value, s.softmax_betas, s.n_show,
                                        out / f"{prefix}softmax_weights.png"),
    }
