"""The report's training section: a short temperature sweep of the smooth-max CNN on digits,
replicated over seeds.

Each beta trains conf/train.yaml's default run (digits, SmoothMaxCNN with normalized pooling,
Adam with a cosine schedule; the constants below, which a test compares with the composed
config) for `epochs` epochs, without probes, once per seed 0 .. seeds-1; the seeds of a beta
are summarized as in a sweep (dnnlab.train.groups: mean, Student-t 95% interval, Welch's test
between adjacent betas). As beta grows the pooling's gradient
softmax(beta x) concentrates on the argmax (docs/math.md (1c)).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dnnlab.core.beta import parse_beta
from dnnlab.core.errors import require
from dnnlab.core.jsonio import write_json
from dnnlab.core.section import Section
from dnnlab.core.table import Table
from dnnlab.train.data import Batches, digits
from dnnlab.train.groups import compare_adjacent, group_jobs
from dnnlab.train.loop import fit, resolve_device, seed_everything
from dnnlab.train.model import SmoothMaxCNN
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
DEVICE = "auto"  # trainer.device (CUDA when present)


@dataclass
class ReportSettings:
    """conf/reproduce.yaml `train:`: the betas of the sweep, the seeds per beta (replicates:
    seeds 0 .. seeds-1) and the epochs of each run."""

    betas: list[Any] = field(default_factory=lambda: [0.5, 1, 2, 4, 8, "inf"])
    epochs: int = 5
    seeds: int = 5

    def __post_init__(self) -> None:
        require(len(self.betas) >= 1, "betas", self.betas, "expected at least one beta")
        for i, b in enumerate(self.betas):
            parse_beta(b, f"betas[{i}]")
        require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        require(self.seeds >= 1, "seeds", self.seeds, "must be >= 1")


def train_one(beta: float, epochs: int, run_dir: Path, seed: int = SEED) -> dict:
    """conf/train.yaml's default run at `beta` and `seed` for `epochs` epochs: its sweep row."""
    seed_everything(seed)
    splits = digits(**DATASET)
    with torch.device(resolve_device(DEVICE)):
        model = SmoothMaxCNN(**MODEL, beta=beta)
    opt = torch.optim.Adam(model.parameters(), **ADAM)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    settings = TrainerSettings(epochs=epochs, device=DEVICE, probe_every=0, progress=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(run_dir / "checkpoint.pt", {"beta": beta, "epochs": epochs, "seed": seed})
    res = fit(model, Batches(splits, BATCH_SIZE, seed), opt, sched, settings, checkpoint=ckpt)
    return {"beta": pool_beta(model), "seed": seed, "test_accuracy": res.test_accuracy,
            "best_val_accuracy": res.best_val_accuracy, "grad_entropy": res.grad_entropy,
            "argmax_mass": res.argmax_mass, "status": "done"}


def _ci(st: dict | None) -> str:
    """mean [lo, hi] of a group's metric (dnnlab.train.groups.describe)."""
    if not st:
        return ""
    lo_hi = st.get("ci95")
    return f"{st['mean']:.3f}" + (f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "")


def report_section(settings: ReportSettings, out_dir: Path,
                   progress: Callable[[str], None] | None = None) -> Section:
    """Train `seeds` runs at each beta; the groups' means with Student-t 95% intervals, Welch's
    test between adjacent betas; the table, the plot and the markdown of the section.
    `progress` gets a line per training (the runner shows it: 30 of them under `make run`)."""
    out_dir = Path(out_dir)
    rows, total = [], len(settings.betas) * settings.seeds
    for i, b in enumerate(settings.betas):
        beta = parse_beta(b, f"train.betas[{i}]")
        for seed in range(settings.seeds):
            t0 = time.perf_counter()
            row = train_one(beta, settings.epochs, out_dir / f"train_beta_{b}_seed_{seed}", seed)
            rows.append({"job": len(rows), "overrides": [f"model.pool.beta={b}",
                                                        f"seed={seed}"]} | row)
            if progress is not None:
                progress(f"train {len(rows)}/{total}: beta={b} seed={seed} "
                         f"({time.perf_counter() - t0:.0f} s) test {row['test_accuracy']:.3f}")
    groups = group_jobs(rows, ["model.pool.beta", "seed"])
    tests = {repr(c["to"]): c for c in compare_adjacent(groups, rows) if
             c["metric"] == "test_accuracy"}
    png = plot_temperature_sweep(rows, out_dir / "train_temperature_sweep.png", groups)
    write_json(out_dir / "train_temperature_sweep.json",
               {"jobs": rows, "groups": groups, "comparisons": list(tests.values())})
    cols = ["beta", "seeds", "test_accuracy", "grad_entropy", "argmax_mass", "vs_previous_beta"]

    def versus(g: dict) -> str:
        c = tests.get(repr(g["key"]))
        if c is None:
            return ""
        if c["p"] is None:
            return f"{c['diff']:+.3f} (no test: fewer than 2 seeds or no spread)"
        return f"{c['diff']:+.3f}, p = {c['p']:.2g}" + (" (significant)" if c["significant"]
                                                        else " (not significant)")

    m = lambda g, k: g["metrics"].get(k)  # noqa: E731
    table = Table("train_temperature_sweep", cols,
                  [[str(r["beta"]), g["n"], _ci(m(g, "test_accuracy")),
                    _ci(m(g, "grad_entropy")), _ci(m(g, "argmax_mass")), versus(g)]
                   for g, r in ((g, rows[g["jobs"][0]]) for g in groups)],
                  title=f"temperature sweep on digits ({settings.seeds} seeds per beta)")
    title = "Training with smooth-max pooling: a temperature sweep"
    lines = [f"\n## {title} (docs/math.md (1c) and (3b))\n",
             f"`python -m pipelines.train` on scikit-learn's digits: {settings.seeds} seeds per "
             f"beta (the replicates: initialization and shuffles; one data split), "
             f"{settings.epochs} epochs each, normalized smooth-max pooling, dnnlab Conv2d layers "
             "with hand-written backward; epochs, seeds and betas chosen small, so that `make run` "
             "stays short on a CPU. Each cell is the mean over the seeds with its Student-t "
             "95% interval; the last column is the change in test accuracy from the previous beta "
             "with Welch's t-test (significant at 0.05). As beta grows the pooling's gradient "
             "softmax(beta x) concentrates on the argmax (entropy / log n -> 0, up to ties "
             "between ReLU zeros, which share it).\n",
             "| beta | seeds | test accuracy | gradient entropy / log n | mass on the argmax "
             "| vs previous beta |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table.text_rows()]
    ent = [m(g, "grad_entropy")["mean"] for g in groups]
    mono = all(a >= b - 1e-9 for a, b in zip(ent, ent[1:]))
    lines.append(f"\nMean entropy non-increasing in beta: {'yes' if mono else 'NO'}.")
    sig = [c for c in tests.values() if c["significant"]]
    if tests:
        lines.append(f"Significant steps in test accuracy between adjacent betas (Welch, 0.05): "
                     f"{len(sig)} of {len(tests)}.")
    images = {}
    if png:
        lines.append(f"\n![temperature sweep]({png.name})\n")
        images["train/temperature_sweep"] = png
    summary = {}
    for g in groups:
        b = rows[g["jobs"][0]]["beta"]
        st = m(g, "test_accuracy")
        summary[f"train/beta_{b}/test_accuracy"] = st["mean"]
        if st.get("ci95"):
            summary[f"train/beta_{b}/test_accuracy_ci95"] = st["ci95"]
    return Section(title, "\n".join(lines) + "\n", images, [table], summary)
