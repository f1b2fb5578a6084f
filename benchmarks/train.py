"""Benchmark: a training step (forward, backward, Adam step) of the smooth-max CNN built from
dnnlab's layers against the same network built from torch's native layers, in the same run.

dnnlab: dnnlab.nn.Conv2d (hand-written backward) + SmoothMaxPool2d (own backward).
torch:  torch.nn.Conv2d + the same pooling through autograd of dnnlab.smoothmax.reference
        (torch.logsumexp, finite beta) or nn.MaxPool2d / AdaptiveMaxPool2d (beta = inf).
Prints images/s and the time ratio dnnlab / torch. Target: at most 1.15x the time (eager).

Timing (dnnlab.core.timing.paired_ratio): the two sides are timed in interleaved pairs of short
blocks (torch.utils.benchmark.Timer.timeit, the mean of a few back-to-back steps, after a
warm-up; alternating which side goes first), and the ratio is the median of the pairs' ratios,
printed with its quartiles ("ratio IQR"). On a shared
2-core machine the time of one block varies by 10-25%; a burst of other work lasts longer than
a pair and hits both of its blocks, so it largely cancels in the pair's ratio. A control row per
input times torch's network against itself the same way: its distance from 1.00 is the noise
of that run, to read the other rows by (it counts in no worst).

The compiled columns time the step with each network through torch.compile
(trainer.compile=true), after all eager rows (compiling starts worker processes that would
compete with eager timings): both networks of a row compiled after one dynamo reset, warmed up
outside the timing, then paired like the eager rows. "compiled ratio" = dnnlab compiled / torch
compiled (no target; the worst is on the last line), "compile speed-up" = dnnlab eager / dnnlab
compiled (above 1: compiling pays), "compile s" the first compiled step of each, dnnlab / torch
(tracing and code generation; less when inductor's on-disk cache already holds the kernels).
`--no-compile` leaves the compiled columns out: on a 2-core CPU `--quick` takes 2.5-5 min
without them (6 with one thread) and about 8 min with them (12 compiled models, 1-25 s each).

A second table times the pooling alone at beta = inf with shared ties (SmoothMaxPool2d, forward
and backward) against nn.MaxPool2d / nn.AdaptiveMaxPool2d on the inputs the network's two
poolings see (the ReLU outputs captured with forward hooks, ReLU zeros and their ties included;
the share of windows with tied maxima is printed), paired the same way. Target: at most 1.10x
the time. Every row prints its ratio; the last line gives the worst of each table. --quick
keeps the shapes and times fewer, shorter pairs: 15 pairs of blocks of at least 0.1 s and 2
calls (a cifar-like step takes about 0.25 s), against 25 of 0.3 s and 3 calls.

`--device cuda` runs every row on the GPU (the same ratios, both sides on the device; the
timer synchronizes CUDA); benchmarks/gpu_checks.py runs it with the other GPU checks.

    python benchmarks/train.py [--quick] [--threads N] [--no-compile] [--device cpu|cuda|auto]
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from dnnlab.core.errors import ConfigError
from dnnlab.core.table import Table
from dnnlab.core.timing import PairedTiming, paired_ratio, torch_threads
from dnnlab.smoothmax.modules import SmoothMaxPool2d
from dnnlab.smoothmax.reference import smooth_max_reference
from dnnlab.train.loop import resolve_device
from dnnlab.train.model import SmoothMaxCNN


class LogSumExpPool2d(nn.Module):
    """Reference pooling: (1/beta) log mean exp(beta x) over windows, by torch autograd."""

    def __init__(self, beta: float, kernel_size: int | None = None):
        super().__init__()
        self.beta, self.k = beta, kernel_size

    def forward(self, x):  # (B, C, H, W)
        b, c = x.shape[:2]
        w = x.flatten(2) if self.k is None else F.unfold(x, self.k, stride=self.k).view(
            b, c, self.k * self.k, -1).transpose(2, 3)  # (B, C, L, k*k)
        out = smooth_max_reference(w, self.beta, dim=-1, normalized=True)  # (B, C, L)
        if self.k is None:
            return out[..., None, None]  # (B, C, 1, 1)
        return out.view(b, c, x.shape[2] // self.k, -1)  # (B, C, H/k, W/k)


def torch_twin(model: SmoothMaxCNN, beta: float) -> nn.Module:
    """The same network (same weights) from torch's native layers."""
    twin = SmoothMaxCNN(model.features[0].in_channels, model.head.out_features,
                        [model.features[i].out_channels for i in (0, 2, 5)], beta=1.0)
    twin.load_state_dict(model.state_dict(), strict=False)
    feats = []
    for m in model.features:
        if type(m).__name__ == "Conv2d":
            c = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding)
            c.load_state_dict(m.state_dict())
            feats.append(c)
        elif type(m).__name__ == "SmoothMaxPool2d":
            k = m.kernel_size[0] if m.kernel_size else None
            if math.isinf(beta):
                feats.append(nn.MaxPool2d(k) if k else nn.AdaptiveMaxPool2d(1))
            else:
                feats.append(LogSumExpPool2d(beta, k))
        else:
            feats.append(m)
    twin.features = nn.Sequential(*feats)
    return twin


def training_step(model, x, y):
    """One training step (forward, backward, Adam step) of `model` (a module or its
    torch.compile) on (x, y), as a function of no arguments."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def compiled_pair(ours: nn.Module, ref: nn.Module, x, y, plan: Plan
                  ) -> tuple[float, float, PairedTiming]:
    """torch.compile of both networks' training steps, timed as the eager rows are (interleaved
    pairs): (seconds of the first step of ours, of ref, i.e. tracing and code generation of
    forward and backward; their PairedTiming), each warmed up outside the timing. Both are
    compiled after one dynamo reset (no state from earlier rows); dnnlab's layers compile with
    no graph break (tests/train/test_compile.py), and a network that compiled no graph at all,
    i.e. would run eagerly under the compiled name, is an error rather than a figure."""
    counters = torch._dynamo.utils.counters["stats"]
    torch._dynamo.reset()
    steps, firsts = [], []
    for m in (ours, ref):
        graphs = counters["unique_graphs"]
        step = training_step(torch.compile(m), x, y)
        t0 = time.perf_counter()
        step()
        firsts.append(time.perf_counter() - t0)
        step()
        step()
        if counters["unique_graphs"] == graphs:
            raise RuntimeError(f"torch.compile of {type(m).__name__} made no graph")
        steps.append(step)
    p = plan.pair(*steps)
    torch._dynamo.reset()
    return firsts[0], firsts[1], p


def pool_inputs(model: SmoothMaxCNN, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The inputs of the network's poolings on x: (kind, (B, C, H, W) tensor)."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(
        ("2x2" if m.kernel_size else "global", i[0].detach().clone())))
        for m in model.features if isinstance(m, SmoothMaxPool2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def tied_share(x: torch.Tensor, k: int | None) -> float:
    """The share of windows (planes for global pooling) whose max occurs more than once."""
    w = x.flatten(2) if k is None else x.unfold(2, k, k).unfold(3, k, k).flatten(-2)
    return float(((w == w.amax(-1, keepdim=True)).sum(-1) > 1).double().mean())


def pool_step(pool: nn.Module, x: torch.Tensor):
    """The pooling's forward and backward (gradient into x), as a function of no arguments."""
    x = x.clone().requires_grad_(True)
    g = torch.randn_like(pool(x))

    def step():
        x.grad = None
        pool(x).backward(g)
    return step


def pool_rows(name: str, model: SmoothMaxCNN, x: torch.Tensor, plan: Plan) -> list[list]:
    rows = []
    for kind, t in pool_inputs(model, x):
        k = 2 if kind == "2x2" else None
        ours = SmoothMaxPool2d(math.inf, kernel_size=k).to(t.device)
        ref = (nn.MaxPool2d(k) if k else nn.AdaptiveMaxPool2d(1)).to(t.device)
        p = plan.pair(pool_step(ours, t), pool_step(ref, t))
        rows.append([name, f"{kind} of {tuple(t.shape)}", tied_share(t, k), 1e3 * p.a,
                     1e3 * p.b, p.ratio, iqr(p), verdict(p, POOL_TARGET)])
    return rows


@dataclass(frozen=True)
class Plan:
    """How long to time: `rounds` interleaved pairs of blocks per row, each block as many calls
    as fill `block` seconds and at least `min_calls`, or exactly `calls` (no warm-up calls to
    size the blocks)."""

    rounds: int
    block: float
    min_calls: int
    calls: int | None = None

    def pair(self, fa, fb) -> PairedTiming:
        return paired_ratio(fa, fb, rounds=self.rounds, min_run_time=self.block,
                            min_calls=self.min_calls,
                            calls=(self.calls, self.calls) if self.calls else None)

    def __str__(self) -> str:
        size = (f"{self.calls} calls" if self.calls
                else f">= {self.block:g} s and >= {self.min_calls} calls")
        return f"{self.rounds} pairs of blocks of {size} per row"


QUICK, FULL = Plan(rounds=15, block=0.1, min_calls=2), Plan(rounds=25, block=0.3, min_calls=3)


def iqr(p: PairedTiming) -> str:
    return f"{p.low:.2f}-{p.high:.2f}"


def verdict(p: PairedTiming, target: float) -> str:
    """PASS when the ratio's spread (its quartiles) is within the target, FAIL when wholly
    above it, else "not resolved": the machine's noise covers the difference."""
    return "PASS" if p.high <= target else "FAIL" if p.low > target else "not resolved"


def overall(verdicts: list[str]) -> str:
    """The worst row's verdict: FAIL, else not resolved, else PASS."""
    return next((v for v in ("FAIL", "not resolved") if v in verdicts), "PASS")


STEP_TARGET, POOL_TARGET = 1.15, 1.10


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's, one per core)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the torch.compile columns (compiling takes most of the time)")
    ap.add_argument("--device", default="cpu",
                    help="cpu, cuda, cuda:<i> or auto (cuda when present); default cpu")
    args = ap.parse_args()
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        ap.error(str(err).replace("trainer.device", "--device"))
    with torch_threads(args.threads):
        run(args.quick, with_compile=not args.no_compile, device=device)


def run(quick: bool, with_compile: bool = True, plan: Plan | None = None,
        device: torch.device | None = None) -> None:
    # torch.compile's code generation imports cpp_extension, which logs "No CUDA runtime is
    # found" on machines without a CUDA toolkit: nothing to do with this benchmark
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    load_before = os.getloadavg()[0]
    plan, device = plan or (QUICK if quick else FULL), device or torch.device("cpu")
    cases = [("digits 1x8x8, batch 64", 1, 8, 64), ("cifar-like 3x32x32, batch 128", 3, 32, 128)]
    rows, prows, controls, nets = [], [], [], []
    for name, c, s, b in cases:  # eager, every row before any compiling
        torch.manual_seed(0)
        x, y = torch.randn(b, c, s, s, device=device), torch.randint(0, 10, (b,), device=device)
        prows += pool_rows(name, SmoothMaxCNN(c, 10, (32, 64, 64), beta=math.inf).to(device), x,
                           plan)
        for beta, ties in ((4.0, "shared"), (math.inf, "shared"), (math.inf, "first")):
            ours = SmoothMaxCNN(c, 10, (32, 64, 64), beta=beta, normalized=True,
                                ties=ties).to(device)
            ref = torch_twin(ours, beta).to(device)
            p = plan.pair(training_step(ours, x, y), training_step(ref, x, y))
            rows.append([name, f"{beta:g}" + (" (ties first)" if ties == "first" else ""),
                         b / p.a, b / p.b, p.ratio, iqr(p), verdict(p, STEP_TARGET)])
            nets.append((ours, ref, x, y, p.a))
        # the control: torch's beta = inf network against itself, timed the same way
        p = plan.pair(training_step(ref, x, y), training_step(ref, x, y))
        controls.append([name, "torch vs torch (noise)", b / p.a, b / p.b, p.ratio, iqr(p), None])
    worst = max(r[4] for r in rows)
    cworst = 0.0
    if with_compile:  # after every eager row: compiling leaves worker processes behind
        for row, (ours, ref, x, y, t_eager) in zip(rows, nets):
            s_ours, s_ref, p = compiled_pair(ours, ref, x, y, plan)
            cworst = max(cworst, p.ratio)
            b = x.shape[0]
            row += [b / p.a, b / p.b, p.ratio, t_eager / p.a, f"{s_ours:.0f} / {s_ref:.0f}"]
        controls = [r + [None] * 5 for r in controls]
    columns = ["input", "beta", "dnnlab img/s", "torch img/s", "time ratio", "ratio IQR",
               "target <= 1.15 (IQR)"]
    if with_compile:
        columns += ["dnnlab compiled img/s", "torch compiled img/s", "compiled ratio",
                    "compile speed-up", "compile s"]
    img = "{:,.0f}"
    table = Table("train_step", columns, rows + controls,
                  title="training step: dnnlab layers vs torch native layers, eager"
                        + (" and torch.compile" if with_compile else "")
                        + " (median of interleaved pairs, same run)",
                  formats={"dnnlab img/s": img, "torch img/s": img, "time ratio": "{:.2f}",
                           "dnnlab compiled img/s": img, "torch compiled img/s": img,
                           "compiled ratio": "{:.2f}", "compile speed-up": "{:.2f}"})
    console = Console(width=230)
    console.print(table.to_rich())
    pool_table = Table("pool_step", ["input", "pooling", "tied windows", "dnnlab ms",
                                     "torch ms", "time ratio", "ratio IQR", "target <= 1.10 (IQR)"],
                       prows,
                       title="max pooling, ties shared (dnnlab) vs torch's MaxPool2d: forward + "
                             "backward (median of interleaved pairs, same run)",
                       formats={"tied windows": "{:.1%}", "dnnlab ms": "{:.3f}",
                                "torch ms": "{:.3f}", "time ratio": "{:.2f}"})
    console.print(pool_table.to_rich())
    pworst = max(r[5] for r in prows)
    noise = max(abs(r[4] - 1.0) for r in controls)
    console.print(f"load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
                  f"after, {os.cpu_count()} cores (above that, other work competes: noisy); "
                  f"{plan}; control "
                  f"(torch vs torch) off 1.00 by up to {noise:.2f}")
    console.print(f"device: {device}; threads: {torch.get_num_threads()}; worst time ratio: "
                  "training step "
                  f"{worst:.2f} (target {overall([r[6] for r in rows])}), pooling "
                  f"{pworst:.2f} (target {overall([r[7] for r in prows])})"
                  + (f"; compiled training step {cworst:.2f} (no target)" if with_compile else ""))


if __name__ == "__main__":
    main()
