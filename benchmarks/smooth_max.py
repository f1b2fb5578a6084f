"""Benchmark: dnnlab's smooth_max against the plain-autograd reference
dnnlab.smoothmax.reference.smooth_max_reference (torch.logsumexp(beta (x - c)) / beta + c).

    python -m benchmarks.smooth_max [--quick] [--beta 2.0] [--min-run-time 0.5] [--threads N]

For each shape and device it times forward + backward of both in interleaved pairs of short
blocks (dnnlab.core.timing.paired_ratio: --rounds pairs, each block filling --min-run-time), and
prints the median of the pairs' time ratios ours / reference with its quartiles, against the
targets of docs/smoothmax.md: time ratio <= 0.7, peak-memory ratio <= 0.25. A verdict is PASS
when the whole interquartile range is within the target, FAIL when it is all outside, and "not
resolved" when the spread covers the target (a shared machine's noise). It always exits 0.

Memory, two honest measures (both over one forward + backward, the input x excluded):
  * peak: the highest total of bytes the allocator hands out above what was live before the
    forward (temporaries, saved tensors, the output, the gradients, x.grad included). On CUDA,
    torch.cuda.max_memory_allocated after reset_peak_memory_stats; on CPU, the running sum of
    the allocation/free events recorded by torch.profiler(profile_memory=True).
    The target applies to this one.
  * retained: the bytes the autograd graph keeps alive between forward and backward: the
    tensors saved for backward (seen with torch.autograd.graph.saved_tensors_hooks, deduplicated
    by storage, and not counting storage shared with x, which the caller holds anyway) plus the
    output.
"""
import argparse
import contextlib
import os
import sys

import torch
from rich.console import Console
from rich.table import Table

from dnnlab.core.timing import paired_ratio, torch_threads
from dnnlab.smoothmax.functional import smooth_max
from dnnlab.smoothmax.reference import smooth_max_reference

TIME_TARGET, MEMORY_TARGET = 0.7, 0.25


def ours(x, beta, dim):
    return smooth_max(x, beta, dim)


def reference(x, beta, dim):
    return smooth_max_reference(x, beta, dim)


def make_cases(quick: bool):
    """(name, input shape, view applied before reducing dim -1)."""
    if quick:
        return [("rows 64x1024", (64, 1024), None),
                ("global pool 8x64x28x28", (8, 64, 28, 28), lambda t: t.flatten(2))]
    return [("rows 256x4096", (256, 4096), None),
            ("global pool 64x64x56x56", (64, 64, 56, 56), lambda t: t.flatten(2))]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(fn, x, beta, view):
    """One forward + backward; x.grad is reset so each step allocates it afresh."""
    x.grad = None
    y = fn(view(x) if view else x, beta, -1)
    y.backward(torch.ones_like(y))
    return y


def paired(x, beta, view, rounds: int, min_run_time: float):
    """ours against the reference, forward + backward, in interleaved pairs of blocks."""
    def a():
        step(ours, x, beta, view)
        sync(x.device)

    def b():
        step(reference, x, beta, view)
        sync(x.device)

    return paired_ratio(a, b, rounds=rounds, min_run_time=min_run_time)


def verdict(low: float, high: float, target: float) -> str:
    """PASS when the interquartile range is within the target, FAIL when all above it."""
    if high <= target:
        return "[green]PASS[/]"
    if low > target:
        return "[red]FAIL[/]"
    return "[yellow]not resolved[/]"


@contextlib.contextmanager
def quiet_stderr():
    """The profiler's C++ side logs to fd 2; keep the table readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_bytes(fn, x, beta, view):
    """Peak bytes allocated above the starting level during one forward + backward."""
    x.grad = None
    if x.device.type == "cuda":
        sync(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        y = step(fn, x, beta, view)
        del y
        sync(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        y = step(fn, x, beta, view)
        del y
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # + on allocation, - on free
        peak = max(peak, live)
    return peak


def retained_bytes(fn, x, beta, view):
    """Bytes of tensors saved for backward (deduplicated by storage, x's storage excluded)
    plus the output's."""
    x.grad = None
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(view(x) if view else x, beta, -1)
    storages.pop(x.untyped_storage().data_ptr(), None)
    total = sum(storages.values())
    if y.untyped_storage().data_ptr() not in storages:
        total += y.untyped_storage().nbytes()
    return total


def check_same(x, beta, view):
    with torch.no_grad():
        a, b = ours(view(x) if view else x, beta, -1), reference(view(x) if view else x, beta, -1)
    return (a - b).abs().max().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per timed block (0.02 quick, 0.05 default)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved pairs of blocks (9 quick, 21 default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        return run(args, args.min_run_time or (0.02 if args.quick else 0.05),
                   args.rounds or (9 if args.quick else 21))


def run(args, min_run_time: float, rounds: int) -> int:

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    console = Console(width=170)
    table = Table(title="smooth_max vs smooth_max_reference (torch.logsumexp autograd), "
                        f"fwd+bwd, float32, beta={args.beta:g}")
    for col in ["device", "shape", "ours ms", "ref ms", "time ratio [q1, q3]", "time",
                "ours peak MiB", "ref peak MiB", "peak ratio", "memory",
                "retained ours/ref MiB", "max |diff|"]:
        table.add_column(col, justify="right" if col not in ("device", "shape") else "left")
    torch.manual_seed(0)
    for device in devices:
        for name, shape, view in make_cases(args.quick):
            x = torch.randn(shape, device=device, requires_grad=True)
            pt = paired(x, args.beta, view, rounds, min_run_time)
            m_ours = peak_bytes(ours, x, args.beta, view)
            m_ref = peak_bytes(reference, x, args.beta, view)
            r_ours = retained_bytes(ours, x, args.beta, view)
            r_ref = retained_bytes(reference, x, args.beta, view)
            mr = m_ours / m_ref
            mib = 2.0**20
            table.add_row(
                device.type, name, f"{1e3 * pt.a:.2f}", f"{1e3 * pt.b:.2f}",
                f"{pt.ratio:.2f} [{pt.low:.2f}, {pt.high:.2f}]",
                verdict(pt.low, pt.high, TIME_TARGET),
                f"{m_ours / mib:.2f}", f"{m_ref / mib:.2f}", f"{mr:.3f}",
                # deterministic; compared at the target's two decimals: ours is x.grad plus a
                # few reduced tensors, the reference four x-sized tensors plus a few
                verdict(round(mr, 2), round(mr, 2), MEMORY_TARGET),
                f"{r_ours / mib:.2f} / {r_ref / mib:.2f}",
                f"{check_same(x, args.beta, view):.1e}",
            )
            del x
    console.print(table)
    console.print(f"target: time ratio <= {TIME_TARGET}, memory ratio <= {MEMORY_TARGET} "
                  "(memory = peak, below, compared at the target's two decimals); 'not resolved': "
                  "the time ratio's interquartile range covers the target")
    console.print(
        f"time: {rounds} interleaved pairs of blocks of forward+backward steps (each block "
        f"about {min_run_time:g} s; dnnlab.core.timing.paired_ratio): ms per step (median over the "
        "blocks) and the median of the pairs' ratios with its quartiles; "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}.\n"
        "peak: highest bytes allocated above the level before the step (input excluded; "
        "temporaries, saved tensors, output, x.grad included): CPU from "
        "torch.profiler(profile_memory=True) allocation/free events, CUDA from "
        "torch.cuda.max_memory_allocated.\n"
        "retained: tensors saved for backward (saved_tensors_hooks, deduplicated by storage, "
        "x's own storage not counted: the caller holds it anyway) + the output."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
