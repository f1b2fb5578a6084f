"""Benchmark: a training step (forward, backward, Adam step) of the smooth-max CNN built from
dnnlab's layers against the same network built from torch's native layers, in the same run.

dnnlab: dnnlab.nn.Conv2d (hand-written backward) + SmoothMaxPool2d (own backward).
torch:  torch.nn.Conv2d + the same pooling through autograd of dnnlab.smoothmax.reference
        (torch.logsumexp, finite beta) or nn.MaxPool2d / AdaptiveMaxPool2d (beta = inf).
Prints images/s and the time ratio dnnlab / torch (medians from torch.utils.benchmark.Timer,
via dnnlab.timing). Target: at most 1.15x the time.

    python benchmarks/train.py [--quick]
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from dnnlab.models import SmoothMaxCNN
from dnnlab.smoothmax.reference import smooth_max_reference
from dnnlab.table import Table
from dnnlab.timing import median_seconds


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


def step_time(model, x, y, min_run_time: float) -> float:
    """Median seconds of one training step (forward, backward, Adam step)."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return median_seconds(step, min_run_time=min_run_time)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    run_time = 0.3 if args.quick else 1.5
    cases = [("digits 1x8x8, batch 64", 1, 8, 64), ("cifar-like 3x32x32, batch 128", 3, 32, 128)]
    rows, worst = [], 0.0
    for name, c, s, b in cases:
        torch.manual_seed(0)
        x, y = torch.randn(b, c, s, s), torch.randint(0, 10, (b,))
        for beta, ties in ((4.0, "shared"), (math.inf, "shared"), (math.inf, "first")):
            ours = SmoothMaxCNN(c, 10, (32, 64, 64), beta=beta, normalized=True, ties=ties)
            ref = torch_twin(ours, beta)
            t_ref, t_ours = [], []
            for _ in range(2):  # interleaved, to be fair to both under load
                t_ours.append(step_time(ours, x, y, run_time))
                t_ref.append(step_time(ref, x, y, run_time))
            to, tr = min(t_ours), min(t_ref)
            worst = max(worst, to / tr)
            rows.append([name, f"{beta:g}" + (" (ties first)" if ties == "first" else ""),
                         b / to, b / tr, to / tr, "PASS" if to / tr <= 1.15 else "FAIL"])
    table = Table("train_step", ["input", "beta", "dnnlab img/s", "torch img/s", "time ratio",
                                 "target <= 1.15"], rows,
                  title="training step: dnnlab layers vs torch native layers (median, same run)",
                  formats={"dnnlab img/s": "{:,.0f}", "torch img/s": "{:,.0f}",
                           "time ratio": "{:.2f}"})
    console = Console(width=130)
    console.print(table.to_rich())
    console.print(f"threads: {torch.get_num_threads()}; worst time ratio {worst:.2f} "
                  f"({'PASS' if worst <= 1.15 else 'FAIL'})")


if __name__ == "__main__":
    main()
