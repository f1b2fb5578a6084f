"""Train a small VGG-style torch network whose max pooling swap_pools turned into smooth-max
pooling, on scikit-learn's bundled digits (8x8, upsampled to 16x16), at finite beta and at
beta = inf (ties="first": the native network). Prints the train loss and test accuracy per
epoch (docs/smoothmax.md, "Training a swapped network").

    PYTHONPATH=$PWD .venv/bin/python benchmarks/swap_pools_digits.py [--epochs 6]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from dnnlab.nn import swap_pools


def data():
    """(x_train, y_train, x_test, y_test): 1437 / 360 images (B, 1, 16, 16) in [0, 1]."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)  # (1797, 1, 16, 16)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1437], y[:1437], x[1437:], y[1437:]


def network() -> nn.Module:
    """conv-bn-relu blocks with torchvision's pooling: resnet's MaxPool2d(3, 2, 1), vgg's
    MaxPool2d(2, 2), and a global AdaptiveMaxPool2d(1) head."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(1, 16), nn.MaxPool2d(3, 2, 1),   # (B, 16, 8, 8)
                         *block(16, 32), nn.MaxPool2d(2, 2),      # (B, 32, 4, 4)
                         *block(32, 64), nn.AdaptiveMaxPool2d(1),  # (B, 64, 1, 1)
                         nn.Flatten(), nn.Linear(64, 10))


def train(beta: float, epochs: int, batch: int = 64) -> list[tuple[float, float]]:
    xtr, ytr, xte, yte = data()
    torch.manual_seed(0)
    model = swap_pools(network(), beta, ties="first")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    out = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(epoch))
        total = 0.0
        for i in range(0, len(ytr), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        out.append((total / len(ytr), acc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--betas", type=float, nargs="+", default=[math.inf, 8.0, 2.0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| beta | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs)) + " | time |")
    print("|---" * (args.epochs + 2) + "|")
    for beta in args.betas:
        t0 = time.perf_counter()
        hist = train(beta, args.epochs)
        cells = [f"{loss:.3f} / {acc:.1%}" for loss, acc in hist]
        name = "inf (native)" if math.isinf(beta) else f"{beta:g}"
        print(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - t0:.1f} s |",
              flush=True)


if __name__ == "__main__":
    main()
