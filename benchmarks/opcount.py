"""Benchmark: dnnlab's analytic counter (meta device) against fvcore's FlopCountAnalysis.

Every torchvision classifier at its default input size, at batch 1 and 16, counted by both
in the same run, each timed by `dnnlab.core.timing.median_seconds` (torch.utils.benchmark.Timer: the
median over as many runs as fit in --min-run-time, after a warm-up; model construction is not
timed); prints per-model times, totals and the ratio fvcore / dnnlab (speed-up).
Targets: never slower than fvcore at batch 1 (ratio >= 1 for every model), >= 10x faster
at batch 16 (total), dnnlab's time independent of batch size.

    python benchmarks/opcount.py              # all classifiers (long: fvcore really computes)
    python benchmarks/opcount.py --quick      # 8 models
    python benchmarks/opcount.py --models alexnet --batches 1
    python benchmarks/opcount.py --zoo --batches 1   # beyond torchvision: timm, recurrent, RAFT
    python benchmarks/opcount.py --llama             # Llama-2-7B at 1 x 128 on meta (< 1 s)
"""
from __future__ import annotations

import argparse
import logging
import warnings

import torch
import torchvision
from rich.console import Console
from rich.table import Table

from dnnlab.core.timing import median_seconds
from dnnlab.opcount import build_meta, count_ops, torchvision_input_shape
from dnnlab.opcount.build import materialize

warnings.filterwarnings("ignore")
logging.getLogger("fvcore").setLevel(logging.ERROR)
QUICK = ["alexnet", "resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16",
         "convnext_tiny", "regnet_y_400mf"]


def _zoo():
    """(name, model, inputs builder(batch)) beyond torchvision's classifiers."""
    import timm

    lstm = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LSTM(64, 128, 2))
    return [
        ("timm/sequencer2d_s", timm.create_model("sequencer2d_s"),
         lambda b: (torch.zeros(b, 3, 224, 224),)),
        ("timm/coat_tiny", timm.create_model("coat_tiny"),
         lambda b: (torch.zeros(b, 3, 224, 224),)),
        ("timm/deit_tiny", timm.create_model("deit_tiny_patch16_224"),
         lambda b: (torch.zeros(b, 3, 224, 224),)),
        ("lstm 2x128", lstm, lambda b: (torch.zeros(20, b, 64),)),
        ("raft_small", torchvision.models.optical_flow.raft_small(),
         lambda b: (torch.zeros(b, 3, 128, 128), torch.zeros(b, 3, 128, 128))),
    ]


def fvcore_total(model, shape) -> int:
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model, shape if isinstance(shape, tuple) else torch.zeros(shape))
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return fca.total()


def llama(repeats: int = 9) -> None:
    """count_ops on Llama-2-7B (its transformers config, built on meta: no weights) at 1 x 128
    token ids: the median and quartiles of `repeats` timed counts (target: median < 1 s)."""
    import statistics
    import time

    import transformers

    cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008,
                                   num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=32, vocab_size=32000,
                                   max_position_embeddings=4096)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg).eval()
    ids = {"input_ids": torch.zeros(1, 128, dtype=torch.long)}
    report = count_ops(model, inputs=ids)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        count_ops(model, inputs=ids)
        times.append(time.perf_counter() - t0)
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    Console().print(f"Llama-2-7B 1x128 (meta): median {med:.3f} s (quartiles {q1:.3f}-{q3:.3f}, "
                    f"{repeats} runs), {report.total_macs():,} MACs; target < 1 s: "
                    f"{'PASS' if med < 1 else 'FAIL'}", highlight=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--zoo", action="store_true", help="timm, recurrent and RAFT models")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 16])
    ap.add_argument("--min-run-time", type=float, default=0.5,
                    help="seconds of runs per timing (at least one run, after a warm-up)")
    ap.add_argument("--llama", action="store_true", help="Llama-2-7B at 1x128 on meta only")
    args = ap.parse_args()
    if args.llama:
        llama()
        return
    names = args.models or (QUICK if args.quick else
                            torchvision.models.list_models(module=torchvision.models))
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    console = Console(width=150)
    table = Table(title="dnnlab count_ops (meta) vs fvcore FlopCountAnalysis (CPU), seconds")
    table.add_column("model")
    for b in args.batches:
        table.add_column(f"dnnlab b{b}", justify="right")
        table.add_column(f"fvcore b{b}", justify="right")
        table.add_column(f"speed-up b{b}", justify="right")
    tot = {b: [0.0, 0.0] for b in args.batches}
    worst_b1 = float("inf")
    entries = _zoo() if args.zoo else [(n, None, None) for n in names]
    for name, model, make in entries:
        if model is None:
            model = materialize(build_meta(lambda n=name: torchvision.models.get_model(n)))
            base = torchvision_input_shape(name, model)
        model.eval()
        cells = [name]
        for b in args.batches:
            shape = make(b) if make else [b] + base[1:]
            ours = median_seconds(lambda m=model, s=shape: count_ops(
                m, None if isinstance(s, tuple) else s,
                inputs=s if isinstance(s, tuple) else None),
                                  min_run_time=args.min_run_time)
            with torch.no_grad():
                theirs = median_seconds(lambda m=model, s=shape: fvcore_total(m, s),
                                        min_run_time=args.min_run_time)
            tot[b][0] += ours
            tot[b][1] += theirs
            if b == 1:
                worst_b1 = min(worst_b1, theirs / ours)
            cells += [f"{ours:.3f}", f"{theirs:.3f}", f"{theirs / ours:.1f}x"]
        table.add_row(*cells)
        console.print(" ".join(cells), highlight=False)
    cells = ["TOTAL"]
    for b in args.batches:
        cells += [f"{tot[b][0]:.2f}", f"{tot[b][1]:.2f}", f"{tot[b][1] / tot[b][0]:.1f}x"]
    table.add_row(*cells, style="bold")
    console.print(table)
    b_hi = max(args.batches)
    console.print(f"models: {len(entries)}; dnnlab time b{b_hi} / b1: "
                  f"{tot[b_hi][0] / tot[min(args.batches)][0]:.2f} (target ~1: batch-independent)")
    console.print(f"target: slowest model at b1 >= 1.0x fvcore: {worst_b1:.1f}x "
                  f"{'PASS' if worst_b1 >= 1 else 'FAIL'}")
    if b_hi >= 16:
        r = tot[b_hi][1] / tot[b_hi][0]
        console.print(f"target: >= 10x at b{b_hi} (total): {r:.1f}x "
                      f"{'PASS' if r >= 10 else 'FAIL'}")


if __name__ == "__main__":
    main()
