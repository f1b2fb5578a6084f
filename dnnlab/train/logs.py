"""What a training run shows in W&B (docs/wandb.md), through a dnnlab.tracking.Tracker.

    logs = TrainLogs(tracker, model, beta)
    logs.start(resumed_at=None)             # define_metric, config, wandb.watch, replay
    fit(..., on_step=logs.on_step, on_probe=logs.on_probe, on_epoch=logs.on_epoch)
    logs.finish(result)                     # test row, summary, probes table, model artifacts

One name per quantity, two step axes: `trainer/global_step` for what is measured per step
(`train/loss`, `train/lr`, `probe/*`) and `epoch` for what is measured per epoch
(`train/loss_epoch`, `train/accuracy`, `val/*`, `train/images_per_s`, `pool/*`, `test/*`). W&B's
own `_step` is the global step, so a row logged twice (a resume's replay) lands on its place.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from dnnlab.beta import log10_beta
from dnnlab.table import Table, jsonable
from dnnlab.train.loop import BEST, CKPT, EpochEnd, TrainResult
from dnnlab.train.probes import probe_metrics

STEP, EPOCH = "trainer/global_step", "epoch"
# (name or glob, its step axis, the summary's aggregation)
METRICS = [
    ("train/loss", STEP, "min"), ("train/lr", STEP, "last"), ("probe/*", STEP, "max"),
    ("train/loss_epoch", EPOCH, "min"), ("train/accuracy", EPOCH, "max"),
    ("val/loss", EPOCH, "min"), ("val/accuracy", EPOCH, "max"),
    ("train/images_per_s", EPOCH, "mean"), ("pool/*", EPOCH, "last"), ("test/*", EPOCH, "last"),
    ("trainer/resumed_from_epoch", EPOCH, "last"),
]
PROBE_COLUMNS = ["step", "layer", "type", "param", "max_abs_err", "max_rel_err"]


class TrainLogs:
    """The W&B side of one training run: callbacks for dnnlab.train.loop.fit."""

    def __init__(self, tracker: Any, model: torch.nn.Module, beta: Any):
        self.tracker, self.model, self.beta = tracker, model, beta
        self.probes: list[list] = []  # the rows of the `probes` table (probes.csv)

    def start(self, resumed_at: int | None = None, watch: str | None = None,
              watch_every: int = 100) -> int:
        """Define the metrics, add `beta` and `log10_beta` to the config, wandb.watch the model
        if asked; after a resume from a checkpoint at step `resumed_at`, keep the probes and
        the history up to it and replay the history into W&B. Returns the rows replayed."""
        tr = self.tracker
        tr.define_metric(STEP)
        tr.define_metric(EPOCH)
        for name, axis, summary in METRICS:
            tr.define_metric(name, step_metric=axis, summary=summary)
        tr.config_update(beta=self.beta, log10_beta=log10_beta(self.beta))
        tr.watch(self.model, watch, watch_every)
        if resumed_at is None:
            return 0
        self.probes = [r for r in _read_csv(tr.run_dir / "probes.csv") if r[0] <= resumed_at]
        return tr.rewind(resumed_at)

    def on_step(self, metrics: dict, step: int) -> None:
        self.tracker.log(metrics, step=step)

    def on_probe(self, rows: list[dict], step: int) -> None:
        """The worst errors over the layers to the history; every row to the probes table."""
        self.probes += [[step] + [r[c] for c in PROBE_COLUMNS[1:]] for r in rows]
        self.tracker.log({STEP: step} | probe_metrics(rows), step=step)

    def on_epoch(self, end: EpochEnd) -> None:
        self.tracker.log(end.metrics(), step=end.step)
        self.tracker.update(history=end.history)
        self.table().to_csv(self.tracker.run_dir)  # probes.csv, as the run goes

    def table(self) -> Table:
        return Table("probes", PROBE_COLUMNS, self.probes,
                     title="hand-written gradients vs autograd, per layer and probe step")

    def finish(self, result: TrainResult, config: dict) -> None:
        """The test row (at the last step, on the epoch axis), results.json, the W&B summary,
        the probes table and the model artifacts: `model.best.pt` (alias best) and
        `checkpoint.pt` (alias latest), with the resolved config as metadata."""
        tr, last = self.tracker, (result.history[-1] if result.history else {})
        tr.log({EPOCH: last.get("epoch", 0), STEP: result.steps,
                "test/accuracy": result.test_accuracy, "test/loss": result.test_loss},
               step=result.steps)
        tr.update(**result.to_dict())
        tr.wandb_summary(beta=self.beta, log10_beta=log10_beta(self.beta), steps=result.steps,
                         epochs=result.epochs, **({"train/compile_seconds": result.compile_seconds}
                                                  if result.compile_seconds is not None else {}))
        if self.probes:
            tr.table(self.table())
        run_dir = Path(tr.run_dir)
        if (run_dir / BEST).exists() and result.history:  # fit keeps the first best epoch
            best = max(result.history, key=lambda h: h["val_accuracy"])
            tr.artifact("model", "model", [run_dir / BEST], aliases=["best"], metadata={
                "epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "config": config})
        if (run_dir / CKPT).exists():
            tr.artifact("model", "model", [run_dir / CKPT], aliases=["latest"], metadata={
                "epoch": last.get("epoch"), "val_accuracy": last.get("val_accuracy"),
                "test_accuracy": result.test_accuracy, "config": jsonable(config)})


def _read_csv(path: Path) -> list[list]:
    """The rows of a probes.csv written before (numbers parsed); [] when there is none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [[int(r[0]), r[1], r[2], r[3], float(r[4]), float(r[5])] for r in rows if len(r) == 6]
