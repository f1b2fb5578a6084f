"""The temperature limits of smooth max (docs/math.md (1a)-(1d)), measured over a grid of beta.

nu_beta(x) = (1/beta) log sum_i exp(beta x_i) is computed by dnnlab.smoothmax.functional
.smooth_max (its own forward and backward). For each input x in R^n (`inputs`) and each beta of
the grid (plus beta = inf), one row:

  gap       nu_beta(x) - max x, nu computed in `dtype`                      (docs/math.md (1a))
  gap_f64   the same in float64 (on the same values of x), for accuracy
  bound     log(n) / beta; 0 at beta = inf                                  (docs/math.md (1a))
  holds     -tol <= gap <= bound + tol (tol: below); holds_f64 the same for gap_f64
  ratio     gap / bound (ratio_f64: gap_f64 / bound); null at beta = inf
  grad_onehot_dist   ||grad nu_beta - e||_1 with e the argmax one-hot; with k tied maxima e
            gives 1/k to each of them (the limit of softmax(beta x) when entries tie)  ((1c))
  grad_entropy       H(grad nu_beta) = -sum_i p_i log p_i, in nats: log n as beta -> 0, log k
            (k tied maxima) at beta = inf
  grad_err_autograd  max_i |our backward - autograd through dnnlab.smoothmax.reference| in
            float64 on the same x (logsumexp(beta (x - c))/beta + c, c = max x held constant;
            torch.amax at beta = inf, which also shares ties equally)
  hessian_err        max |H_ours - H_ref| / max(1, beta) over the Hessian of nu_beta on the
            HESSIAN_N largest entries of x, in float64: ours by double backward through smooth_max,
            the reference by autograd through torch.logsumexp; also the trace against
            beta (1 - sum mu^2), mu = softmax(beta x)                      (docs/math.md (1d))
  hessian_norm       its largest eigenvalue, at most hessian_bound = beta / 2        ((1d))
and per input grad1_softmax_err = max_i |grad nu_1 - torch.softmax(x)_i| (docs/math.md (1b)),
the softmax in float64.

Tolerance of `holds` (absolute, on the gap):
    tol = 4 eps_d max(|max x|, |nu|) + 4 eps_c (1 + log2 n) / beta
eps_d is the machine epsilon of `dtype` (nu is rounded to it, so near |x| ~ 1e38 in float32 the
gap is 0 or a whole ulp of max x); eps_c that of the dtype smooth_max computes in
(dnnlab.core.dtypes.compute_dtype): r = log sum exp(beta (x - max)) carries an absolute error of
about eps_c (1 + log2 n) (n rounded exps, a pairwise sum), divided by beta. At beta = inf,
tol = 4 eps_d |max x| (the gap is exactly 0 there).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch

from dnnlab.core.beta import parse_beta
from dnnlab.core.dtypes import DType, compute_dtype, dtype_name, torch_dtype
from dnnlab.core.errors import require
from dnnlab.core.table import Table
from dnnlab.smoothmax.functional import smooth_max
from dnnlab.smoothmax.reference import smooth_max_reference

INF = math.inf
MAX_N = 10_000_000
HISTORY = ("gap", "ratio", "grad_onehot_dist", "grad_entropy", "grad_err_autograd",
           "hessian_norm")
COLUMNS = ["input", "beta", "n", "dtype", "gap", "gap_f64", "bound", "tol", "holds", "holds_f64",
           "ratio", "grad_onehot_dist", "grad_entropy", "grad_err_autograd", "hessian_err",
           "hessian_norm", "hessian_bound"]
HESSIAN_N = 16  # entries of each input whose Hessian is formed (one backward pass per entry)
HESSIAN_TOL = 1e-9  # on hessian_err (float64, relative to max(1, beta))


class Distribution(str, Enum):
    """The input vectors (conf/smoothmax.yaml `inputs`)."""

    normal = "normal"  # N(0, 1)
    uniform = "uniform"  # U(0, 1)
    ties = "ties"  # N(0, 1) with several (up to 5) entries equal to the max
    neg_inf = "neg_inf"  # N(0, 1) with half of the entries -inf
    large = "large"  # U(-1, 1) * half the dtype's largest value (float32's for float64)
    onehot_gap = "onehot_gap"  # U(0, 1) with one entry at 2: the max separated by a gap >= 1


DISTRIBUTIONS = tuple(d.value for d in Distribution)


# -- settings ----------------------------------------------------------------------------------

@dataclass
class BetaGrid:
    """The grid of inverse temperatures: `num` log-spaced points from `min` to `max`, then inf."""

    min: float = 1.0e-3
    max: float = 1.0e6
    num: int = 28  # three per decade from 1e-3 to 1e6, beta = 1 on it
    include_inf: bool = True  # nu_inf = max exactly, grad = the argmax one-hot

    def __post_init__(self) -> None:
        require(math.isfinite(self.min) and self.min > 0, "min", self.min,
                "expected a finite number > 0")
        require(math.isfinite(self.max) and self.max > 0, "max", self.max,
                "expected a finite number > 0")
        require(1 <= self.num <= 10_000, "num", self.num, "expected an int in [1, 10,000]")
        require(self.max > self.min or (self.max == self.min and self.num == 1), "max", self.max,
                f"must be > beta.min = {self.min:g} (or equal with beta.num=1)")

    def values(self) -> list[float]:
        """The grid, then inf if include_inf; exactly min and max at the ends."""
        betas = [float(b) for b in np.logspace(math.log10(self.min), math.log10(self.max),
                                               self.num)]
        betas[0], betas[-1] = self.min, self.max
        return betas + ([INF] if self.include_inf else [])


@dataclass
class LimitsSettings:
    """conf/smoothmax.yaml: the inputs, the dtype and the beta grid of the limits experiment."""

    n: int = 1000  # entries per input vector
    inputs: list[Distribution] = field(default_factory=lambda: list(Distribution))
    seed: int = 0  # the inputs are drawn from torch.Generator(seed), per distribution
    dtype: DType = DType.float32  # the dtype of x (and of nu, grad)
    beta: BetaGrid = field(default_factory=BetaGrid)
    softmax_betas: list[Any] = field(  # betas of the softmax-weights plot ("inf" allowed)
        default_factory=lambda: [0.1, 1, 10, 100, "inf"])
    softmax_input: Distribution = Distribution.normal  # the input of that plot
    n_show: int = 20  # entries shown in that plot
    table_betas: int = 6  # finite betas in the terminal table (evenly spread; plus inf)

    def __post_init__(self) -> None:
        require(2 <= self.n <= MAX_N, "n", self.n, f"expected an int in [2, {MAX_N:,}]")
        self.inputs = [Distribution(d) for d in self.inputs]
        require(bool(self.inputs), "inputs", [], "expected a non-empty list of distributions")
        require(len(set(self.inputs)) == len(self.inputs), "inputs",
                [d.value for d in self.inputs], "a distribution is listed twice")
        self.dtype, self.softmax_input = DType(self.dtype), Distribution(self.softmax_input)
        require(0 <= self.seed <= 2**31 - 1, "seed", self.seed, "expected an int in [0, 2**31-1]")
        tiny = torch.finfo(compute_dtype(self.torch_dtype)).tiny
        require(self.beta.min >= tiny, "beta.min", self.beta.min,  # beta (x - max) in that dtype
                f"must be >= {tiny:.3g} for dtype {self.dtype.value}")
        require(bool(self.softmax_betas), "softmax_betas", self.softmax_betas,
                "expected a non-empty list of betas")
        self.softmax_betas = [parse_beta(b, f"softmax_betas[{i}]")
                              for i, b in enumerate(self.softmax_betas)]
        require(self.n_show >= 1, "n_show", self.n_show, "expected an int >= 1")
        require(self.table_betas >= 1, "table_betas", self.table_betas, "expected an int >= 1")

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)


# -- inputs ------------------------------------------------------------------------------------

def make_input(name: Distribution | str, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The input vector (n,) of distribution `name` in `dtype`, the same for a given seed
    whatever else is in `inputs` (each distribution has its own generator)."""
    name = Distribution(name).value
    g = torch.Generator().manual_seed(seed * 1000 + DISTRIBUTIONS.index(name))
    f64 = torch.float64
    if name in ("normal", "ties", "neg_inf"):
        x = torch.randn(n, generator=g, dtype=f64)
    elif name == "large":  # half the largest value, so nu (<= max + log(n)/beta) stays finite
        big = 0.5 * min(torch.finfo(dtype).max, torch.finfo(torch.float32).max)
        x = (2 * torch.rand(n, generator=g, dtype=f64) - 1) * big
    else:  # uniform, onehot_gap
        x = torch.rand(n, generator=g, dtype=f64)
    x = x.to(dtype)  # (n,) the values used from here on; the edits below are exact in the dtype
    perm = torch.randperm(n, generator=g)
    if name == "ties":  # k entries equal to the max (k = 2..5)
        x[perm[:min(5, max(2, n // 2))]] = x.max()
    elif name == "neg_inf":  # half of the entries -inf, at least one finite
        x[perm[:n // 2]] = -INF
    elif name == "onehot_gap":  # max = 2, the rest in [0, 1)
        x[perm[0]] = 2.0
    return x


# -- one row -----------------------------------------------------------------------------------

def tolerance(dtype: torch.dtype, n: int, beta: float, scale: float) -> float:
    """The absolute slack of the bound check in `dtype` (module docstring); scale = |nu|."""
    eps_d = torch.finfo(dtype).eps
    eps_c = torch.finfo(compute_dtype(dtype)).eps
    tol = 4 * eps_d * scale
    if beta != INF:
        tol += 4 * eps_c * (1 + math.log2(n)) / beta
    return tol


def grad_tol(dtype: torch.dtype) -> float:
    """The slack for gradient entries (in [0, 1]): a few roundings in `dtype`."""
    return 8 * torch.finfo(dtype).eps


def nu_and_grad(x: torch.Tensor, beta: float) -> tuple[float, torch.Tensor]:
    """nu_beta(x) (docs/math.md (1a)) and our backward's gradient softmax(beta x) ((1c))."""
    xr = x.detach().clone().requires_grad_(True)  # (n,)
    nu = smooth_max(xr, beta)  # ()
    nu.backward()
    return nu.item(), xr.grad


def argmax_onehot(x: torch.Tensor) -> torch.Tensor:
    """e: the argmax one-hot, 1/k on each of k tied maxima (the limit of docs/math.md (1c)),
    rounded to x.dtype like a gradient in that dtype, returned in float64."""
    hit = (x == x.max()).double()  # (n,)
    return (hit / hit.sum()).to(x.dtype).double()


def reference_grad(x64: torch.Tensor, beta: float) -> torch.Tensor:
    """The gradient of dnnlab.smoothmax.reference (autograd through torch.logsumexp, shifted by
    a constant max; torch.amax at beta = inf), in float64."""
    xr = x64.detach().clone().requires_grad_(True)  # (n,)
    smooth_max_reference(xr, beta).backward()
    return xr.grad


def top_entries(x64: torch.Tensor) -> torch.Tensor:
    """The HESSIAN_N largest entries (the tied maxima among them), where the curvature is."""
    return torch.topk(x64, min(HESSIAN_N, x64.numel())).values


def hessian_check(x64: torch.Tensor, beta: float) -> tuple[float, float]:
    """(error, largest eigenvalue) of the Hessian of nu_beta at x64 (float64, a few entries):
    double backward through smooth_max against autograd through torch.logsumexp and against
    the trace beta (1 - sum mu^2) (docs/math.md (1d)); the error relative to max(1, beta)."""
    hessian = torch.autograd.functional.hessian
    ours = hessian(lambda v: smooth_max(v, beta), x64)  # (k, k)
    ref = hessian(lambda v: smooth_max_reference(v, beta), x64)
    scale = max(1.0, beta) if beta != INF else 1.0
    err = torch.nan_to_num((ours - ref).abs(), nan=math.inf).max().item()
    if beta != INF:
        keep = torch.isfinite(x64)  # -inf entries: weight 0
        mu = torch.softmax(beta * (x64[keep] - x64[keep].max()), 0)
        trace = beta * (1 - (mu * mu).sum()).item()  # (1d)
        err = max(err, abs(torch.trace(ours).item() - trace))
    return err / scale, torch.linalg.eigvalsh(ours).max().item() + 0.0


def measure_row(x: torch.Tensor, beta: float) -> dict:
    """The row of one 1-D input x (in its own dtype) at one beta in (0, inf]."""
    n, dtype = x.numel(), x.dtype
    x64 = x.detach().double()  # (n,) the same values, exactly
    m = x64.max().item()
    nu, grad = nu_and_grad(x, beta)
    nu64 = smooth_max(x64, beta).item()
    gap, gap64 = nu - m, nu64 - m  # docs/math.md (1a): nu_beta - max x (float64 arithmetic)
    bound = math.log(n) / beta  # docs/math.md (1a): log(n) / beta, 0 at inf
    tol = tolerance(dtype, n, beta, max(abs(m), abs(nu)))
    tol64 = tolerance(torch.float64, n, beta, max(abs(m), abs(nu64)))
    p = grad.double()  # (n,) grad nu_beta = softmax(beta x)  (docs/math.md (1c))
    return {
        "beta": beta, "n": n, "dtype": dtype_name(dtype),
        "nu": nu, "max": m, "gap": gap, "gap_f64": gap64, "bound": bound, "tol": tol,
        "holds": bool(-tol <= gap <= bound + tol),  # docs/math.md (1a)
        "holds_f64": bool(-tol64 <= gap64 <= bound + tol64),
        "ratio": gap / bound if bound > 0 else None,
        "ratio_f64": gap64 / bound if bound > 0 else None,
        "grad_onehot_dist": (p - argmax_onehot(x)).abs().sum().item(),  # (1c): -> 0
        "grad_entropy": -torch.special.xlogy(p, p).sum().item() + 0.0,  # + 0.0: no "-0"
        "grad_err_autograd": (p - reference_grad(x64, beta)).abs().max().item(),
        **dict(zip(("hessian_err", "hessian_norm"), hessian_check(top_entries(x64), beta))),
        "hessian_bound": beta / 2,  # (1d): ||hess nu_beta||_2 <= beta / 2
    }


def grad1_softmax_err(x: torch.Tensor) -> float:
    """max_i |grad nu_1(x) - softmax(x)_i| (docs/math.md (1b)), softmax in float64 on x."""
    _, grad = nu_and_grad(x, 1.0)
    return (grad.double() - torch.softmax(x.double(), -1)).abs().max().item()


# -- the result --------------------------------------------------------------------------------

def short(v, digits: int = 3) -> str:
    """v with `digits` significant digits; "-" for None."""
    return "-" if v is None else f"{v:.{digits}g}"


@dataclass
class LimitsResult:
    """The rows measured so far (all of them once `done == len(betas)`), and the headline."""

    n: int
    dtype: str
    seed: int
    inputs: list[str]
    betas: list[float]
    grad1_softmax_err: dict[str, float]
    rows: list[dict] = field(default_factory=list)
    done: int = 0  # betas measured
    headline: dict = field(default_factory=dict)  # filled when the grid is done
    hessian_n: int = HESSIAN_N  # the largest entries whose Hessian is checked (1d)

    @property
    def all_bounds_hold(self) -> bool:
        return all(r["holds"] and r["holds_f64"] for r in self.rows)

    def to_dict(self) -> dict:
        """results.json's content (inf stays a float here; the tracker writes it as "inf")."""
        return {"n": self.n, "dtype": self.dtype, "seed": self.seed, "inputs": self.inputs,
                "betas": self.betas, "grad1_softmax_err": self.grad1_softmax_err,
                "rows": self.rows, "all_bounds_hold": self.all_bounds_hold, **self.headline}

    def history(self, i: int) -> dict | None:
        """The W&B history of the i-th beta (None at inf): beta, log10_beta, bound and
        <key>/<input> for the keys of HISTORY."""
        beta = self.betas[i]
        if beta == INF:
            return None
        batch = [r for r in self.rows if r["beta"] == beta]
        return {"beta": beta, "log10_beta": math.log10(beta), "bound": batch[0]["bound"],
                **{f"{k}/{r['input']}": r[k] for r in batch for k in HISTORY
                   if r[k] is not None}}

    def tables(self) -> list[Table]:
        """Every row (rows.csv, the W&B table `rows`)."""
        return [Table("rows", COLUMNS, [[r[c] for c in COLUMNS] for r in self.rows],
                      title="smooth max limits, every row")]

    def overview(self, table_betas: int, key: str = "limits") -> Table:
        """The terminal table: input x a few betas (evenly spread over the grid, plus inf)."""
        finite = [b for b in self.betas if b != INF]
        pick = sorted({finite[round(i)] for i in np.linspace(0, len(finite) - 1,
                                                             min(table_betas, len(finite)))})
        pick += [INF] if INF in self.betas else []
        cols = ["input", "beta", "gap", "bound", "gap/bound", "holds", "||grad-e||_1",
                "entropy", "err vs autograd"]
        rows = [[r["input"], *(short(r[k]) for k in ("beta", "gap", "bound", "ratio")),
                 "yes" if r["holds"] and r["holds_f64"] else "NO",
                 *(short(r[k]) for k in ("grad_onehot_dist", "grad_entropy", "grad_err_autograd"))]
                for name in self.inputs for r in self.rows
                if r["input"] == name and r["beta"] in pick]
        errs = ", ".join(f"{k} {v:.2g}" for k, v in self.grad1_softmax_err.items())
        return Table(key, cols, rows, title=(
            f"smooth max limits (docs/math.md (1a)-(1c)): n={self.n:,}, {self.dtype}, "
            f"{len(self.betas)} betas ({len(pick)} shown)"), caption=(
            f"all bounds hold: {self.all_bounds_hold}; worst gap/bound "
            f"{short(self.headline.get('worst_gap_bound_ratio'), 5)}; "
            f"|grad nu_1 - softmax(x)|: {errs}"))


def headline(result: LimitsResult, dtype: torch.dtype) -> dict:
    """The claims of docs/math.md (1a)-(1c), summed up over the rows."""
    rows, tol = result.rows, grad_tol(dtype)
    finite = [r for r in rows if r["beta"] != INF]
    top = max(r["beta"] for r in finite) if finite else None
    out = {
        "worst_gap_bound_ratio": max((r["ratio"] for r in finite), default=None),
        "worst_gap_bound_ratio_f64": max((r["ratio_f64"] for r in finite), default=None),
        "min_gap": min(r["gap"] for r in rows),
        "max_grad_err_autograd": max(r["grad_err_autograd"] for r in rows),
        "max_grad1_softmax_err": max(result.grad1_softmax_err.values()),
        "grad_onehot_dist_at_max_beta": {r["input"]: r["grad_onehot_dist"] for r in finite
                                         if r["beta"] == top},
        "grad_onehot_dist_at_inf": {r["input"]: r["grad_onehot_dist"] for r in rows
                                    if r["beta"] == INF},
    }
    # ||softmax(beta x) - e||_1 = 2 (1 - k p_max) never grows with beta (docs/math.md (1c))
    monotone = True
    for name in result.inputs:
        d = [r["grad_onehot_dist"] for r in rows if r["input"] == name]
        monotone &= all(b <= a + tol for a, b in itertools.pairwise(d))
    out["grad_onehot_dist_monotone"] = monotone
    out["grad1_softmax_holds"] = out["max_grad1_softmax_err"] <= tol
    out["max_hessian_err"] = max(r["hessian_err"] for r in rows)  # (1d)
    out["hessian_holds"] = out["max_hessian_err"] <= HESSIAN_TOL and all(
        r["hessian_norm"] <= r["hessian_bound"] * (1 + HESSIAN_TOL) + HESSIAN_TOL for r in rows)
    return out


# -- the experiment ----------------------------------------------------------------------------

def run(settings: LimitsSettings, *,
        on_progress: Callable[[LimitsResult], None] | None = None) -> LimitsResult:
    """A row per input and beta of the grid; `on_progress(partial)` after each beta's rows."""
    s, dtype = settings, settings.torch_dtype
    xs = {d.value: make_input(d, s.n, dtype, s.seed) for d in s.inputs}
    result = LimitsResult(n=s.n, dtype=dtype_name(dtype), seed=s.seed, inputs=list(xs),
                          betas=s.beta.values(),
                          grad1_softmax_err={k: grad1_softmax_err(x) for k, x in xs.items()})
    for beta in result.betas:
        result.rows.extend({"input": name, **measure_row(x, beta)} for name, x in xs.items())
        result.done += 1
        if result.done == len(result.betas):
            result.headline = headline(result, dtype)
        if on_progress is not None:
            on_progress(result)
    return result
