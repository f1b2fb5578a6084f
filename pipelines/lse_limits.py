"""The temperature limits of smooth max (seed problem 1), measured over a grid of beta.

    python -m pipelines.lse_limits                          # n=1000, float32, 6 inputs, 29 betas
    python -m pipelines.lse_limits n=10 dtype=float16 inputs=[ties,neg_inf]
    python -m pipelines.lse_limits -m n=10,1000,100000      # one W&B run per job, one group

nu_beta(x) = (1/beta) log sum_i exp(beta x_i) is computed by dnnlab.functional.smooth_max (its
own forward and backward). For each input x in R^n (conf/lse_limits.yaml `inputs`) and each beta
of the grid (plus beta = inf), one row:

  gap       nu_beta(x) - max x, nu computed in `dtype`                              (seed 1a)
  gap_f64   the same in float64 (on the same values of x), for accuracy
  bound     log(n) / beta; 0 at beta = inf                                          (seed 1a)
  holds     -tol <= gap <= bound + tol (tol: below); holds_f64 the same for gap_f64
  ratio     gap / bound (ratio_f64: gap_f64 / bound); null at beta = inf
  grad_onehot_dist   ||grad nu_beta - e||_1 with e the argmax one-hot; with k tied maxima e
            gives 1/k to each of them (the limit of softmax(beta x) when entries tie)   (seed 1c)
  grad_entropy       H(grad nu_beta) = -sum_i p_i log p_i, in nats: log n as beta -> 0, log k
            (k tied maxima) at beta = inf
  grad_err_autograd  max_i |our backward - autograd through torch.logsumexp(beta x) / beta|,
            the reference in float64 on the same x, written logsumexp(beta (x - c))/beta + c
            with c = max x held constant (same gradient; keeps the reference accurate when
            |beta x| >> 1/eps, see reference_grad); at beta = inf against torch.amax's autograd
            (which also shares ties equally)
and per input grad1_softmax_err = max_i |grad nu_1 - torch.softmax(x)_i| (seed 1b), the softmax
in float64.

Tolerance of `holds` (absolute, on the gap):
    tol = 4 eps_d max(|max x|, |nu|) + 4 eps_c (1 + log2 n) / beta
eps_d is the machine epsilon of `dtype` (nu is rounded to it, so near |x| ~ 1e38 in float32 the
gap is 0 or a whole ulp of max x); eps_c that of the dtype smooth_max computes in (float32 for
float32/float16/bfloat16, float64 for float64): r = log sum exp(beta (x - max)) carries an
absolute error of about eps_c (1 + log2 n) (n rounded exps, a pairwise sum), divided by beta.
At beta = inf, tol = 4 eps_d |max x| (the gap is exactly 0 there).

Outputs in the run dir: results.json (written as rows come in; inf is written as the string
"inf"), rows.csv, gap_vs_beta.png, grad_vs_beta.png, softmax_weights.png. In W&B: the same
images, the rows as a table, and one history step per finite beta (step = its index in the grid)
with beta, log10_beta, bound and gap/<input>, ratio/<input>, grad_onehot_dist/<input>,
grad_entropy/<input>, grad_err_autograd/<input>, charted against log10_beta (define_metric).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from dnnlab import plots
from dnnlab.cli import console, run_job
from dnnlab.errors import ConfigError
from dnnlab.functional import smooth_max
from dnnlab.tracking import Tracker

INF = math.inf
DISTRIBUTIONS = ("normal", "uniform", "ties", "neg_inf", "large", "onehot_gap")
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
MAX_N = 10_000_000
HISTORY = ("gap", "ratio", "grad_onehot_dist", "grad_entropy", "grad_err_autograd")


# -- config ----------------------------------------------------------------------------------

@dataclass
class Settings:
    """The validated config."""

    n: int
    inputs: list[str]
    seed: int
    dtype: torch.dtype
    betas: list[float]  # the log-spaced grid, then inf if beta.include_inf
    softmax_betas: list[float]
    softmax_input: str
    n_show: int
    table_betas: int


def _value(cfg: DictConfig, key: str):
    v = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def _int(cfg: DictConfig, key: str, lo: int, hi: int | None = None) -> int:
    v = _value(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi:,}]"
        raise ConfigError(f"{key}: expected an int {rng}, got {v!r}")
    return v


def _float(key: str, v, allow_inf: bool) -> float:
    """A number (or a string such as "1e-3" or "inf") > 0; inf only if allow_inf."""
    f = None
    if isinstance(v, str):
        try:
            f = float({".inf": "inf", "+.inf": "inf"}.get(v.strip().lower(), v))
        except ValueError:
            pass
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        f = float(v)
    if f is None or math.isnan(f) or f <= 0 or (f == INF and not allow_inf):
        what = "a number in (0, inf]" if allow_inf else "a finite number > 0"
        raise ConfigError(f"{key}: expected {what}, got {v!r}")
    return f


def _distribution(key: str, v) -> str:
    if v not in DISTRIBUTIONS:
        raise ConfigError(f"{key}: unknown distribution {v!r} (known: {', '.join(DISTRIBUTIONS)})")
    return v


def settings(cfg: DictConfig) -> Settings:
    """Validate conf/lse_limits.yaml; a bad value raises ConfigError naming the key and value."""
    n = _int(cfg, "n", 2, MAX_N)
    inputs = _value(cfg, "inputs")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs:
        raise ConfigError(f"inputs: expected a non-empty list of distributions, got {inputs!r}")
    for name in inputs:
        _distribution("inputs", name)
    if len(set(inputs)) != len(inputs):
        raise ConfigError(f"inputs: a distribution is listed twice in {inputs}")
    seed = _int(cfg, "seed", 0, 2**31 - 1)
    dtype = _value(cfg, "dtype")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    dtype = DTYPES[dtype]
    lo = _float("beta.min", _value(cfg, "beta.min"), allow_inf=False)
    hi = _float("beta.max", _value(cfg, "beta.max"), allow_inf=False)
    num = _int(cfg, "beta.num", 1, 10_000)
    tiny = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).tiny
    if lo < tiny:  # smooth_max computes beta (x - max) in that dtype
        raise ConfigError(f"beta.min: must be >= {tiny:.3g} for dtype {dtype}, got {lo!r}")
    if hi < lo or (hi == lo and num > 1):
        raise ConfigError(f"beta.max: must be > beta.min = {lo:g} (or equal with beta.num=1), "
                          f"got {hi!r}")
    include_inf = _value(cfg, "beta.include_inf")
    if not isinstance(include_inf, bool):
        raise ConfigError(f"beta.include_inf: expected true or false, got {include_inf!r}")
    betas = [float(b) for b in np.logspace(math.log10(lo), math.log10(hi), num)]
    betas[0], betas[-1] = lo, hi  # exactly the configured ends
    betas += [INF] if include_inf else []
    sb = _value(cfg, "softmax_betas")
    if not isinstance(sb, list) or not sb:
        raise ConfigError(f"softmax_betas: expected a non-empty list of betas, got {sb!r}")
    sb = [_float("softmax_betas", b, allow_inf=True) for b in sb]
    return Settings(n=n, inputs=list(inputs), seed=seed, dtype=dtype, betas=betas,
                    softmax_betas=sb,
                    softmax_input=_distribution("softmax_input", _value(cfg, "softmax_input")),
                    n_show=_int(cfg, "n_show", 1), table_betas=_int(cfg, "table_betas", 1))


# -- inputs ----------------------------------------------------------------------------------

def make_input(name: str, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The input vector (n,) of distribution `name` in `dtype`, the same for a given seed
    whatever else is in `inputs` (each distribution has its own generator)."""
    g = torch.Generator().manual_seed(seed * 1000 + DISTRIBUTIONS.index(name))
    f64 = torch.float64
    if name in ("normal", "ties", "neg_inf"):
        x = torch.randn(n, generator=g, dtype=f64)
    elif name == "large":  # half the largest value, so nu (<= max + log(n)/beta) stays finite
        big = 0.5 * min(torch.finfo(dtype).max, torch.finfo(torch.float32).max)
        x = (2 * torch.rand(n, generator=g, dtype=f64) - 1) * big
    else:  # uniform, onehot_gap
        x = torch.rand(n, generator=g, dtype=f64)
    x = x.to(dtype)  # the values used from here on; the edits below are exact in the dtype
    perm = torch.randperm(n, generator=g)
    if name == "ties":  # k entries equal to the max (k = 2..5)
        x[perm[:min(5, max(2, n // 2))]] = x.max()
    elif name == "neg_inf":  # half of the entries -inf, at least one finite
        x[perm[:n // 2]] = -INF
    elif name == "onehot_gap":  # max = 2, the rest in [0, 1)
        x[perm[0]] = 2.0
    return x


# -- one row ---------------------------------------------------------------------------------

def tolerance(dtype: torch.dtype, n: int, beta: float, scale: float) -> float:
    """The absolute slack of the bound check in `dtype` (module docstring); scale = |nu|."""
    eps_d = torch.finfo(dtype).eps
    eps_c = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    tol = 4 * eps_d * scale
    if beta != INF:
        tol += 4 * eps_c * (1 + math.log2(n)) / beta
    return tol


def grad_tol(dtype: torch.dtype) -> float:
    """The slack for gradient entries (in [0, 1]): a few roundings in `dtype`."""
    return 8 * torch.finfo(dtype).eps


def nu_and_grad(x: torch.Tensor, beta: float) -> tuple[float, torch.Tensor]:
    """nu_beta(x) (seed 1a) and our backward's gradient softmax(beta x) (seed 1c), in x.dtype."""
    xr = x.detach().clone().requires_grad_(True)
    nu = smooth_max(xr, beta)
    nu.backward()
    return nu.item(), xr.grad


def argmax_onehot(x: torch.Tensor) -> torch.Tensor:
    """e: the argmax one-hot, 1/k on each of k tied maxima (the limit of seed 1c), rounded to
    x.dtype like a gradient in that dtype, returned in float64."""
    hit = (x == x.max()).double()
    return (hit / hit.sum()).to(x.dtype).double()


def reference_grad(x64: torch.Tensor, beta: float) -> torch.Tensor:
    """Autograd through torch.logsumexp(beta x) / beta in float64; torch.amax at beta = inf.

    Written logsumexp(beta (x - c)) / beta + c with c = max x a constant: the same function and
    gradient, but beta x unshifted would lose the reference's accuracy where |beta x| >> 1/eps
    (with k maxima tied at 1.7e38 and beta x ~ 1e35, log k is absorbed and each tied entry gets
    weight 1 instead of 1/k; at beta = 1e6 with |x| ~ 1, about 1e-10 of every weight)."""
    xr = x64.detach().clone().requires_grad_(True)
    if beta == INF:
        y = torch.amax(xr, -1)
    else:
        c = x64.max()  # a constant: no gradient flows through it
        y = torch.logsumexp(beta * (xr - c), -1) / beta + c
    y.backward()
    return xr.grad


def measure_row(x: torch.Tensor, beta: float) -> dict:
    """The row of one 1-D input x (in its own dtype) at one beta in (0, inf]."""
    n, dtype = x.numel(), x.dtype
    x64 = x.detach().double()  # the same values, exactly
    m = x64.max().item()
    nu, grad = nu_and_grad(x, beta)
    nu64 = smooth_max(x64, beta).item()
    gap, gap64 = nu - m, nu64 - m  # seed 1a: nu_beta - max x (float64 arithmetic)
    bound = math.log(n) / beta  # seed 1a: log(n) / beta, 0 at inf
    tol = tolerance(dtype, n, beta, max(abs(m), abs(nu)))
    tol64 = tolerance(torch.float64, n, beta, max(abs(m), abs(nu64)))
    p = grad.double()  # grad nu_beta = softmax(beta x)  (seed 1c)
    return {
        "beta": beta, "n": n, "dtype": str(dtype).removeprefix("torch."),
        "nu": nu, "max": m, "gap": gap, "gap_f64": gap64, "bound": bound, "tol": tol,
        "holds": bool(-tol <= gap <= bound + tol),  # seed 1a
        "holds_f64": bool(-tol64 <= gap64 <= bound + tol64),
        "ratio": gap / bound if bound > 0 else None,
        "ratio_f64": gap64 / bound if bound > 0 else None,
        "grad_onehot_dist": (p - argmax_onehot(x)).abs().sum().item(),  # seed 1c: -> 0
        "grad_entropy": -torch.special.xlogy(p, p).sum().item() + 0.0,  # + 0.0: no "-0"
        "grad_err_autograd": (p - reference_grad(x64, beta)).abs().max().item(),
    }


def grad1_softmax_err(x: torch.Tensor) -> float:
    """max_i |grad nu_1(x) - softmax(x)_i| (seed 1b), softmax in float64 on the same x."""
    _, grad = nu_and_grad(x, 1.0)
    return (grad.double() - torch.softmax(x.double(), -1)).abs().max().item()


# -- the sweep -------------------------------------------------------------------------------

def sweep(s: Settings, results: dict | None = None,
          on_beta: Callable[[int, float, list], None] | None = None) -> dict:
    """Fill `results` (results.json's content) with a row per input and beta; `on_beta(i, beta,
    rows)` is called after each beta's rows are in (to save and log as they come)."""
    results = {} if results is None else results
    xs = {name: make_input(name, s.n, s.dtype, s.seed) for name in s.inputs}
    results.update({
        "n": s.n, "dtype": str(s.dtype).removeprefix("torch."), "seed": s.seed,
        "inputs": s.inputs, "betas": s.betas,
        "grad1_softmax_err": {name: grad1_softmax_err(x) for name, x in xs.items()},
        "rows": [], "all_bounds_hold": True})
    for i, beta in enumerate(s.betas):
        batch = [{"input": name, **measure_row(x, beta)} for name, x in xs.items()]
        results["rows"].extend(batch)
        results["all_bounds_hold"] &= all(r["holds"] and r["holds_f64"] for r in batch)
        if on_beta is not None:
            on_beta(i, beta, batch)
    results.update(headline(results, s.dtype))
    return results


def headline(results: dict, dtype: torch.dtype) -> dict:
    """The seed's claims, summed up over the rows."""
    rows, tol = results["rows"], grad_tol(dtype)
    finite = [r for r in rows if r["beta"] != INF]
    top = max(r["beta"] for r in finite) if finite else None
    out = {
        "worst_gap_bound_ratio": max((r["ratio"] for r in finite), default=None),
        "worst_gap_bound_ratio_f64": max((r["ratio_f64"] for r in finite), default=None),
        "min_gap": min(r["gap"] for r in rows),
        "max_grad_err_autograd": max(r["grad_err_autograd"] for r in rows),
        "max_grad1_softmax_err": max(results["grad1_softmax_err"].values()),
        "grad_onehot_dist_at_max_beta": {r["input"]: r["grad_onehot_dist"] for r in finite
                                         if r["beta"] == top},
        "grad_onehot_dist_at_inf": {r["input"]: r["grad_onehot_dist"] for r in rows
                                    if r["beta"] == INF},
    }
    # ||softmax(beta x) - e||_1 = 2 (1 - k p_max) never grows with beta (seed 1c)
    monotone = True
    for name in results["inputs"]:
        d = [r["grad_onehot_dist"] for r in rows if r["input"] == name]
        monotone &= all(b <= a + tol for a, b in itertools.pairwise(d))
    out["grad_onehot_dist_monotone"] = monotone
    out["grad1_softmax_holds"] = out["max_grad1_softmax_err"] <= tol
    return out


# -- plots -----------------------------------------------------------------------------------

def _by_input(results: dict, key: str, finite_only: bool = True) -> dict:
    rows = [r for r in results["rows"] if not (finite_only and r["beta"] == INF)]
    return {name: ([r["beta"] for r in rows if r["input"] == name],
                   [r[key] for r in rows if r["input"] == name]) for name in results["inputs"]}


def _positive(xs, ys):
    """The points with y > 0 (a log axis cannot draw 0)."""
    pts = [(a, b) for a, b in zip(xs, ys) if b is not None and b > 0]
    return [a for a, _ in pts], [b for _, b in pts]


def plot_gap(results: dict, path: Path) -> Path:
    """Seed 1a: nu_beta - max x and the bound log(n)/beta against beta, log-log."""
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    f64 = _by_input(results, "gap_f64")
    for k, (name, (b, g)) in enumerate(_by_input(results, "gap").items()):
        ax.loglog(*_positive(b, g), marker="o", ms=3, color=f"C{k}", label=name)
        if results["dtype"] != "float64":
            ax.loglog(*_positive(*f64[name]), ":", lw=1, color=f"C{k}")
    betas = [b for b in results["betas"] if b != INF]
    ax.loglog(betas, [math.log(results["n"]) / b for b in betas], "k--", lw=1.5,
              label="bound log(n)/beta")
    ax.set_xlabel("beta")
    ax.set_ylabel("gap = nu_beta(x) - max x")
    extra = "; dotted: float64" if results["dtype"] != "float64" else ""
    ax.set_title(f"seed 1a: 0 <= gap <= log(n)/beta, n={results['n']:,}, {results['dtype']}"
                 f"\n(gap 0 not drawn; gap = 0 at beta = inf{extra})", fontsize=9)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)


def plot_grad(results: dict, path: Path) -> Path:
    """Seed 1c: ||grad nu_beta - e||_1 and the entropy of grad nu_beta against beta."""
    plt = plots.plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    ents = _by_input(results, "grad_entropy")
    for k, (name, (b, d)) in enumerate(_by_input(results, "grad_onehot_dist").items()):
        ax.loglog(*_positive(b, d), marker="o", ms=3, color=f"C{k}", label=name)
        ax2.semilogx(*ents[name], marker="o", ms=3, color=f"C{k}", label=name)
    ax.set_xlabel("beta")
    ax.set_ylabel("||grad nu_beta - e_argmax||_1")
    ax.set_title("seed 1c: grad nu_beta -> e_argmax (ties: 1/k each)\n(0 not drawn; 0 at "
                 "beta = inf)", fontsize=9)
    ax2.axhline(math.log(results["n"]), color="k", ls="--", lw=1, label="log n")
    ax2.set_xlabel("beta")
    ax2.set_ylabel("entropy of grad nu_beta (nats)")
    ax2.set_title("entropy: log n (uniform) -> log k (k tied maxima)", fontsize=9)
    for a in (ax, ax2):
        a.grid(which="both", alpha=0.3)
        a.legend(fontsize=7)
    return plots.save(fig, path)


def shown_entries(x: torch.Tensor, n_show: int) -> range:
    """The first n_show entries, or n_show entries around the argmax when it is not among them."""
    n, k = x.numel(), min(n_show, x.numel())
    i = int(torch.argmax(x.double()))
    start = 0 if i < k else min(max(0, i - k // 2), n - k)
    return range(start, start + k)


def plot_softmax(x: torch.Tensor, name: str, betas: list, n_show: int, path: Path) -> Path:
    """Seeds 1b/1c: the weights grad nu_beta = softmax(beta x) of one input at several beta."""
    plt = plots.plt
    idx = shown_entries(x, n_show)
    argmax = int(torch.argmax(x.double()))
    fig, axes = plt.subplots(1, len(betas), figsize=(2.8 * len(betas) + 1, 3.3), squeeze=False)
    for ax, beta in zip(axes[0], betas):
        p = nu_and_grad(x, beta)[1].double()
        h = -torch.special.xlogy(p, p).sum().item() + 0.0
        w = [p[i].item() for i in idx]
        ax.bar(list(idx), w, color=["tab:red" if i == argmax else "tab:blue" for i in idx])
        ax.axhline(1 / x.numel(), color="k", ls=":", lw=1)  # the uniform weight 1/n (beta -> 0)
        ax.set_title(f"beta = {beta:g}\nentropy {h:.3g} nats", fontsize=9)
        ax.set_xlabel("entry i")
        ax.set_ylim(0, 1.15 * max(max(w), 1 / x.numel()))  # each panel its own scale
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("softmax(beta x)_i")
    fig.suptitle(f"grad nu_beta = softmax(beta x) (seed 1b at beta = 1, 1c): '{name}', entries "
                 f"{idx.start}..{idx.stop - 1} of {x.numel():,} (red: argmax; dotted: 1/n; "
                 "own y scale per panel)", fontsize=10)
    return plots.save(fig, path)


def make_plots(results: dict, s: Settings, out: Path, prefix: str = "") -> dict:
    """The three PNGs in `out`; returns {name: path}."""
    x = make_input(s.softmax_input, s.n, s.dtype, s.seed)
    return {
        "gap_vs_beta": plot_gap(results, out / f"{prefix}gap_vs_beta.png"),
        "grad_vs_beta": plot_grad(results, out / f"{prefix}grad_vs_beta.png"),
        "softmax_weights": plot_softmax(x, s.softmax_input, s.softmax_betas, s.n_show,
                                        out / f"{prefix}softmax_weights.png"),
    }


# -- terminal table --------------------------------------------------------------------------

def _g(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def print_table(results: dict, table_betas: int) -> None:
    """input x a subset of betas (evenly spread over the grid, plus inf)."""
    finite = [b for b in results["betas"] if b != INF]
    pick = sorted({finite[round(i)] for i in np.linspace(0, len(finite) - 1,
                                                                min(table_betas, len(finite)))})
    pick += [INF] if INF in results["betas"] else []
    t = Table(title=f"smooth max limits (seed 1): n={results['n']:,}, {results['dtype']}, "
                    f"{len(results['betas'])} betas ({len(pick)} shown)")
    for col in ("input", "beta", "gap", "bound", "gap/bound", "holds", "||grad-e||_1",
                "entropy", "err vs autograd"):
        t.add_column(col, justify="left" if col == "input" else "right")
    for name in results["inputs"]:
        for r in results["rows"]:
            if r["input"] == name and r["beta"] in pick:
                ok = "[green]yes[/]" if r["holds"] and r["holds_f64"] else "[red]NO[/]"
                t.add_row(name, _g(r["beta"]), _g(r["gap"]), _g(r["bound"]), _g(r["ratio"]), ok,
                          _g(r["grad_onehot_dist"]), _g(r["grad_entropy"]),
                          _g(r["grad_err_autograd"]))
        t.add_section()
    errs = ", ".join(f"{k} {v:.2g}" for k, v in results["grad1_softmax_err"].items())
    t.caption = (f"all bounds hold: {results['all_bounds_hold']}; worst gap/bound "
                 f"{_g(results['worst_gap_bound_ratio'], 5)}; |grad nu_1 - softmax(x)|: {errs}")
    console.print(t)


# -- the job ---------------------------------------------------------------------------------

COLUMNS = ["input", "beta", "n", "dtype", "gap", "gap_f64", "bound", "tol", "holds", "holds_f64",
           "ratio", "grad_onehot_dist", "grad_entropy", "grad_err_autograd"]


def job(cfg: DictConfig, tracker: Tracker) -> dict:
    s = settings(cfg)
    if tracker.run is not None:  # W&B charts the per-beta history against log10(beta)
        tracker.run.define_metric("log10_beta")
        for key in HISTORY:
            tracker.run.define_metric(f"{key}/*", step_metric="log10_beta")
        tracker.run.define_metric("bound", step_metric="log10_beta")

    def on_beta(i: int, beta: float, batch: list) -> None:
        tracker.save()  # results.json as rows come in
        if beta != INF:
            tracker.log({"beta": beta, "log10_beta": math.log10(beta), "bound": batch[0]["bound"],
                         **{f"{k}/{r['input']}": r[k] for r in batch for k in HISTORY
                            if r[k] is not None}}, step=i)

    with console.status(f"smooth max over {len(s.betas)} betas, n={s.n:,} ..."):
        results = sweep(s, tracker.results, on_beta)
    tracker.save()
    print_table(results, s.table_betas)
    pngs = make_plots(results, s, tracker.run_dir)
    for key, png in pngs.items():
        tracker.image(key, png)
    # a W&B column holds one type: beta as text ("0.001", "inf")
    tracker.table("rows", COLUMNS, [[f"{r[c]:.6g}" if c == "beta" else r[c] for c in COLUMNS]
                                    for r in results["rows"]])
    tracker.summary(
        plots=[p.name for p in pngs.values()],
        **{k: results[k] for k in ("all_bounds_hold", "worst_gap_bound_ratio",
                                   "worst_gap_bound_ratio_f64", "min_gap",
                                   "max_grad_err_autograd", "max_grad1_softmax_err",
                                   "grad_onehot_dist_monotone", "grad1_softmax_holds",
                                   "grad1_softmax_err", "grad_onehot_dist_at_max_beta",
                                   "grad_onehot_dist_at_inf")})
    console.print(f"results: {tracker.run_dir / 'results.json'}")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="lse_limits")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "lse_limits", job)


# -- the report ------------------------------------------------------------------------------

def report_section(cfg: DictConfig, out: Path, tracker: Tracker) -> str:
    """The report's section for seed problem 1: the default sweep, a claims table, the plots.

    Optional `smooth_max.overrides` in the report's config (e.g. [n=100]) are applied to
    conf/lse_limits.yaml."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():  # pragma: no cover - called under Hydra
        raise RuntimeError("report_section needs Hydra")
    overrides = list((cfg.get("smooth_max", None) or {}).get("overrides", []) or [])
    s = settings(compose(config_name="lse_limits", overrides=overrides))
    res = sweep(s)
    print_table(res, s.table_betas)
    pngs = make_plots(res, s, out, prefix="lse_")
    for key, png in pngs.items():
        tracker.image(f"lse/{key}", png)
    tracker.summary(**{f"lse/{k}": res[k] for k in (
        "all_bounds_hold", "worst_gap_bound_ratio", "max_grad1_softmax_err",
        "grad_onehot_dist_monotone")})
    return markdown(res, s, pngs)


def markdown(res: dict, s: Settings, pngs: dict) -> str:
    """The section's text: the claims table, a table per input, the plots."""
    yes = {True: "yes", False: "NO"}
    finite = [b for b in s.betas if b != INF]
    at_top, at_inf = res["grad_onehot_dist_at_max_beta"], res["grad_onehot_dist_at_inf"]
    gap_inf = [r["gap"] for r in res["rows"] if r["beta"] == INF]
    first = [r["grad_onehot_dist"] for r in res["rows"] if r["beta"] == finite[0]]
    ok_1a = res["all_bounds_hold"] and all(g == 0 for g in gap_inf)
    ok_1c = res["grad_onehot_dist_monotone"] and all(v == 0 for v in at_inf.values())
    inf_1a = f"; gap at beta = inf: {max(gap_inf):.3g}" if gap_inf else ""
    inf_1c = f", at inf {max(at_inf.values()):.3g}" if at_inf else ""
    intro = ("nu_beta(x) = (1/beta) log sum_i exp(beta x_i), computed by "
             "`dnnlab.functional.smooth_max` (shifted by the max, its own backward), on "
             f"{len(s.inputs)} inputs of n = {s.n:,} entries ({', '.join(s.inputs)}) in "
             f"{res['dtype']}, beta from {finite[0]:g} to {finite[-1]:g} ({len(finite)} "
             f"log-spaced){' and inf' if at_inf else ''}. Rerun and sweep with "
             "`python -m pipelines.lse_limits`. With k tied maxima e_argmax gives 1/k to each "
             "(the limit of softmax(beta x)).\n")
    claim_1a = ("| 1a: nu_beta -> max x, 0 <= nu_beta - max x <= log(n)/beta | worst gap/bound "
                f"over the grid {_g(res['worst_gap_bound_ratio'], 5)} ({res['dtype']}), "
                f"{_g(res['worst_gap_bound_ratio_f64'], 5)} (float64); smallest gap "
                f"{_g(res['min_gap'])}{inf_1a} | {yes[ok_1a]} |")
    claim_1b = ("| 1b: grad nu_1 = softmax(x) | max abs error against torch.softmax (float64): "
                f"{res['max_grad1_softmax_err']:.2g} | {yes[res['grad1_softmax_holds']]} |")
    claim_1c = ("| 1c: grad nu_beta -> e_argmax | max over inputs of \\|\\|grad nu_beta - "
                f"e\\|\\|_1: {max(first):.3g} at beta = {finite[0]:g}, "
                f"{max(at_top.values()):.3g} at beta = {finite[-1]:g}{inf_1c}; non-increasing "
                f"in beta | {yes[ok_1c]} |")
    head = (f"| input | worst gap/bound | \\|\\|grad - e\\|\\|_1 at beta = {finite[-1]:g} | "
            "at inf | \\|grad nu_1 - softmax\\| | \\|backward - autograd\\| |")
    per_input = ("\nPer input (worst over the grid; backward error against autograd through "
                 "torch.logsumexp, float64):\n")
    lines = ["\n## 1. Smooth max (seed problem 1)\n", intro,
             "| seed claim | measured | holds |", "|---|---|---|", claim_1a, claim_1b, claim_1c,
             per_input, head, "|---|---|---|---|---|---|"]
    for name in s.inputs:
        rows = [r for r in res["rows"] if r["input"] == name]
        worst = max((r["ratio"] for r in rows if r["ratio"] is not None), default=None)
        lines.append(f"| {name} | {_g(worst, 5)} | {_g(at_top.get(name))} | "
                     f"{_g(at_inf.get(name))} | {res['grad1_softmax_err'][name]:.2g} | "
                     f"{max(r['grad_err_autograd'] for r in rows):.2g} |")
    lines += ["", f"![gap and bound against beta]({pngs['gap_vs_beta'].name})", "",
              f"![distance to the one-hot and entropy]({pngs['grad_vs_beta'].name})", "",
              f"![softmax weights]({pngs['softmax_weights'].name})", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from dnnlab.cli import launch

    launch("pipelines.lse_limits")
