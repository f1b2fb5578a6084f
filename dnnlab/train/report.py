"""The report's training section: a short temperature sweep of the smooth-max CNN on digits.

Each beta trains conf/train.yaml's default run (digits, SmoothMaxCNN with normalized pooling,
Adam with a cosine schedule, seed 0; the constants below, which a test compares with the
composed config) for `epochs` epochs, without probes. As beta grows the pooling's gradient
softmax(beta x) concentrates on the argmax (docs/math.md (1c)).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dnnlab.beta import parse_beta
from dnnlab.errors import require
from dnnlab.models import SmoothMaxCNN
from dnnlab.report import Section
from dnnlab.table import Table
from dnnlab.train.data import Batches, digits
from dnnlab.train.loop import fit, seed_everything
from dnnlab.train.plots import plot_temperature_sweep
from dnnlab.train.probes import pool_beta
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import TrainerSettings

# conf/train.yaml's defaults (tests/train/test_report.py checks them against the composed config)
SEED = 0
DATASET = {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0}  # data.dataset (digits)
BATCH_SIZE = 64
MODEL = {"in_channels": 1, "num_classes": 10, "channels": [16, 32, 32], "learnable": False,
         "normalized": True, "ties": "shared"}  # model.builder (smoothmax_cnn), but beta
ADAM = {"lr": 0.01, "weight_decay": 0.0}  # optimizer (adam)
DEVICE = "cpu"  # trainer.device


@dataclass
class ReportSettings:
    """conf/reproduce.yaml `train:`: the betas of the sweep and the epochs of each run."""

    betas: list[Any] = field(default_factory=lambda: [0.5, 2, 8, "inf"])
    epochs: int = 5

    def __post_init__(self) -> None:
        require(len(self.betas) >= 1, "betas", self.betas, "expected at least one beta")
        for i, b in enumerate(self.betas):
            parse_beta(b, f"betas[{i}]")
        require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")


def train_one(beta: float, epochs: int, run_dir: Path) -> dict:
    """conf/train.yaml's default run at `beta` for `epochs` epochs: its sweep row."""
    seed_everything(SEED)
    splits = digits(**DATASET)
    with torch.device(DEVICE):
        model = SmoothMaxCNN(**MODEL, beta=beta)
    opt = torch.optim.Adam(model.parameters(), **ADAM)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    settings = TrainerSettings(epochs=epochs, device=DEVICE, probe_every=0, progress=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(run_dir / "checkpoint.pt", {"beta": beta, "epochs": epochs})
    res = fit(model, Batches(splits, BATCH_SIZE, SEED), opt, sched, settings, checkpoint=ckpt)
    return {"beta": pool_beta(model), "test_accuracy": res.test_accuracy,
            "grad_entropy": res.grad_entropy, "argmax_mass": res.argmax_mass, "status": "done"}


def report_section(settings: ReportSettings, out_dir: Path) -> Section:
    """Train at each beta; the table, the plot and the markdown of the section."""
    out_dir = Path(out_dir)
    rows = []
    for i, b in enumerate(settings.betas):
        beta = parse_beta(b, f"train.betas[{i}]")
        row = train_one(beta, settings.epochs, out_dir / f"train_beta_{b}")
        rows.append({"job": i} | row)
    png = plot_temperature_sweep(rows, out_dir / "train_temperature_sweep.png")
    (out_dir / "train_temperature_sweep.json").write_text(json.dumps(rows, indent=2))
    cols = ["beta", "test_accuracy", "grad_entropy", "argmax_mass"]
    table = Table("train_temperature_sweep", cols,
                  [[str(r["beta"])] + [r[c] for c in cols[1:]] for r in rows],
                  title="temperature sweep on digits",
                  formats={c: "{:.3f}" for c in cols[1:]})
    title = "Training with smooth-max pooling: a temperature sweep"
    lines = [f"\n## {title} (docs/math.md (1c) and (4b))\n",
             f"`python -m pipelines.train` on scikit-learn's digits ({settings.epochs} epochs "
             "each, normalized smooth-max pooling, dnnlab Conv2d layers with hand-written "
             "backward). As beta grows the pooling's gradient softmax(beta x) concentrates on "
             "the argmax (entropy / log n -> 0, up to ties between ReLU zeros, which share it).\n",
             "| beta | test accuracy | gradient entropy / log n | mass on the argmax |",
             "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table.text_rows()]
    ent = [r["grad_entropy"] for r in rows]
    mono = all(a >= b - 1e-9 for a, b in zip(ent, ent[1:]))
    lines.append(f"\nEntropy non-increasing in beta: {'yes' if mono else 'NO'}.")
    images = {}
    if png:
        lines.append(f"\n![temperature sweep]({png.name})\n")
        images["train/temperature_sweep"] = png
    summary = {f"train/beta_{r['beta']}/test_accuracy": r["test_accuracy"] for r in rows}
    return Section(title, "\n".join(lines) + "\n", images, [table], summary)
