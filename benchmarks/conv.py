"""Benchmark: our Conv2d (hand-written backward, docs/math.md (3b)) against torch.nn.Conv2d.

    python benchmarks/conv.py            # ~2-3 minutes on 2 CPU cores
    python benchmarks/conv.py --quick    # ~30 s
    python benchmarks/conv.py --device cuda
    python benchmarks/conv.py --threads 2   # torch.set_num_threads(2)

Three tables:
1. Conv2d forward+backward (input, weight and bias gradients) on ResNet-like shapes, ours vs
   torch, plus ours with the explicit weight gradient C_{v^T} y of (3a) (informational: why the
   default uses torch's backward-weights kernel, see dnnlab/conv/function.py).
2. One training step (forward, cross-entropy, backward, SGD step) of torchvision's resnet18,
   native vs swap_convs'd.
3. The chain (dnnlab.conv.chain, docs/math.md (3)): forward+backward of the matrix form (A_w
   formed, O(n^2)) against the conv form (O(n f)) for n = 2^6 .. 2^14.

Timing: dnnlab.core.timing.median_seconds (torch.utils.benchmark.Timer: as many runs as fit in
`min_run_time` after a warm-up, the median; CUDA synchronized). Each variant is timed in its own
block; table 3 as dnnlab.conv.scaling does it (the matrix form's gigabyte allocations would
otherwise charge the conv form with page faults).
Memory: on CPU, the bytes of the tensors saved for backward during the forward pass, caught with
torch.autograd.graph.saved_tensors_hooks and deduplicated by storage (a tensor saved twice, or
two views of one storage, count once; the storage's full size counts). On CUDA, the peak of
torch.cuda.max_memory_allocated over forward+backward, above what was allocated before.
Target: time ratio (ours/torch) <= 1.10 and memory ratio <= 1.0 on every row.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from dnnlab.conv.function import weight_grad_mode
from dnnlab.conv.scaling import log2_label, measure_row
from dnnlab.core.timing import median_seconds
from dnnlab.nn import Conv2d, swap_convs

TIME_TARGET, MEM_TARGET = 1.10, 1.0
console = Console(width=132)  # wide enough for the tables when piped to a file


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def medians(fns: dict, min_run_time: float) -> dict[str, float]:
    """Median seconds of each fn (dnnlab.core.timing.median_seconds)."""
    return {k: median_seconds(fn, min_run_time=min_run_time) for k, fn in fns.items()}


def saved_bytes(forward) -> int:
    """Bytes saved for backward by `forward()`, deduplicated by storage."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.device, s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


def memory(step, forward, device) -> int:
    """Peak CUDA memory of step() (CUDA), or bytes saved for backward by forward() (CPU)."""
    if device.type != "cuda":
        return saved_bytes(forward)
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def verdict(ok: bool) -> str:
    return "[green]PASS[/]" if ok else "[red]FAIL[/]"


# ----------------------------------------------------------------------------------------------
# 1. single layers


SHAPES = [  # (name, C_in, C_out, H, kernel, stride, padding)
    ("3x3 64ch 56x56", 64, 64, 56, 3, 1, 1),
    ("3x3 128ch 28x28", 128, 128, 28, 3, 1, 1),
    ("3x3 256ch 14x14", 256, 256, 14, 3, 1, 1),
    ("3x3 64->128 s2 56x56", 64, 128, 56, 3, 2, 1),
    ("1x1 64->256 56x56", 64, 256, 56, 1, 1, 0),
]


def bench_layers(batches, min_run_time, device, dtype) -> bool:
    table = Table(title=f"Conv2d forward+backward (input, weight, bias grads), {device.type}, "
                        f"{dtype}")
    for col in ["shape", "batch", "torch ms", "ours ms", "time ratio", "explicit-dw ratio",
                "torch saved", "ours saved", "mem ratio", ""]:
        table.add_column(col, justify="left" if col == "shape" else "right")
    all_ok = True
    for batch, (name, cin, cout, h, k, s, p) in itertools.product(batches, SHAPES):
        torch.manual_seed(0)
        ref = torch.nn.Conv2d(cin, cout, k, s, p).to(device, dtype)
        ours = Conv2d(cin, cout, k, s, p).to(device, dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(batch, cin, h, h, device=device, dtype=dtype, requires_grad=True)
        gy = torch.randn_like(ref(x))

        def step(m, x=x, gy=gy):
            return lambda: torch.autograd.grad(m(x), [x, m.weight, m.bias], gy)

        run_ours = step(ours)

        def explicit(run=run_ours):
            with weight_grad_mode("explicit"):
                run()

        t = medians({"torch": step(ref), "ours": run_ours, "explicit": explicit}, min_run_time)
        m_ref = memory(step(ref), lambda m=ref, x=x: m(x), device)
        m_ours = memory(step(ours), lambda m=ours, x=x: m(x), device)
        tr, mr = t["ours"] / t["torch"], m_ours / m_ref
        ok = tr <= TIME_TARGET and mr <= MEM_TARGET
        all_ok &= ok
        table.add_row(name, str(batch), f"{t['torch'] * 1e3:.2f}", f"{t['ours'] * 1e3:.2f}",
                      f"{tr:.3f}",
                      f"{t['explicit'] / t['torch']:.3f}", f"{m_ref / 2**20:.1f} MiB",
                      f"{m_ours / 2**20:.1f} MiB", f"{mr:.3f}", verdict(ok))
    console.print(table)
    return all_ok


# ----------------------------------------------------------------------------------------------
# 2. a resnet18 training step


def bench_resnet(batches, size, min_run_time, device, dtype) -> bool:
    import torchvision

    torch.manual_seed(0)
    native = torchvision.models.resnet18(weights=None).to(device, dtype)
    swapped = swap_convs(copy.deepcopy(native))
    table = Table(title=f"resnet18 training step (fwd + bwd + SGD), 3x{size}x{size}, "
                        f"{device.type}, {dtype}")
    for col in ["model", "batch", "median ms", "memory", "time ratio", "mem ratio", ""]:
        table.add_column(col, justify="left" if col == "model" else "right")
    ok = True
    for batch in batches:
        ok &= _resnet_rows(table, native, swapped, batch, size, min_run_time, device, dtype)
    console.print(table)
    return ok


def _resnet_rows(table, native, swapped, batch, size, min_run_time, device, dtype) -> bool:
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    labels = torch.randint(0, 1000, (batch,), device=device)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
            for m in (native, swapped)}

    def step(m):
        def run():
            opt = opts[id(m)]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), labels).backward()
            opt.step()
        return run

    t = medians({"torch": step(native), "ours": step(swapped)}, min_run_time)
    mem = {k: memory(step(m), lambda m=m: F.cross_entropy(m(x), labels), device)
           for k, m in (("torch", native), ("ours", swapped))}
    tr, mr = t["ours"] / t["torch"], mem["ours"] / mem["torch"]
    ok = tr <= TIME_TARGET and mr <= MEM_TARGET
    table.add_row("native", str(batch), f"{t['torch'] * 1e3:.1f}",
                  f"{mem['torch'] / 2**20:.1f} MiB", "", "", "")
    table.add_row("swap_convs", str(batch), f"{t['ours'] * 1e3:.1f}",
                  f"{mem['ours'] / 2**20:.1f} MiB", f"{tr:.3f}", f"{mr:.3f}", verdict(ok))
    return ok


# ----------------------------------------------------------------------------------------------
# 3. the chain: matrix form vs conv form


def bench_chain(max_log2, repeats, device, max_matrix_bytes=2e9):
    rows = [measure_row(2**k, (3, 3, 3), "tanh", batch=1, dtype=torch.float32, device=device,
                        repeats=repeats, max_matrix_bytes=max_matrix_bytes)
            for k in range(6, max_log2 + 1)]
    table = Table(title="the chain (3 layers, f=3, tanh, float32): forward+backward, "
                        "matrix form (A_w formed) vs conv form (docs/math.md (3b))")
    for col in ["n", "matrix ms", "conv ms", "matrix/conv", "A_w bytes", "conv bytes"]:
        table.add_column(col, justify="right")
    for r in rows:
        skipped = r["matrix_skipped"]
        table.add_row(
            log2_label(r["n"]),
            "skipped" if skipped else f"{r['matrix_s'] * 1e3:.3f}",
            f"{r['conv_s'] * 1e3:.3f}",
            "-" if skipped else f"{r['matrix_s'] / r['conv_s']:.1f}x",
            f"{r['matrix_a_bytes'] / 2**20:.1f} MiB",
            f"{r['conv_bytes'] / 2**10:.1f} KiB",
        )
    console.print(table)
    skipped = [r["n"] for r in rows if r["matrix_skipped"]]
    if skipped:
        console.print(f"matrix form skipped for n = {', '.join(map(str, skipped))}: its A_w "
                      f"matrices would exceed {max_matrix_bytes / 1e9:.0f} GB")
    cross = next((r["n"] for r in rows if not r["matrix_skipped"] and r["matrix_s"] > r["conv_s"]),
                 None)
    console.print(f"conv form faster from n = {cross}" if cross else "matrix form never slower")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timings, smaller sizes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32
    cpu = device.type == "cpu"
    q = args.quick
    console.print(f"torch {torch.__version__}, device {device}"
                  + (f" ({torch.get_num_threads()} threads)" if cpu else
                     f" ({torch.cuda.get_device_name(device)})"))
    if not cpu:
        torch.backends.cudnn.benchmark = True
    ok = bench_layers(batches=[4 if q else 16] if cpu else [64, 256],
                      min_run_time=0.2 if q else 1.0, device=device, dtype=dtype)
    ok &= bench_resnet(batches=[8] if cpu else [64, 256], size=112 if cpu else 224,
                       min_run_time=0.5 if q else 2.0, device=device, dtype=dtype)
    if not cpu:
        console.print("note: where torch's time is short, a GPU step is bound by the CPU's kernel "
                      "launches, and the Python autograd.Function's overhead (tens of us per conv, "
                      "forward and backward) shows in the ratio; larger batches hide it.")
    bench_chain(max_log2=12 if q else 14, repeats=2 if q else 3, device=device)
    console.print(f"target: time ratio <= {TIME_TARGET:.2f}, memory ratio <= {MEM_TARGET:.1f}: "
                  + verdict(ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
