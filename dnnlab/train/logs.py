"""What a training run shows in W&B (docs/wandb.md): a loop Callback that hands the records to
a dnnlab.run.tracking.Tracker under W&B's names, one per quantity, on two step axes:
`trainer/global_step` (`train/loss`, `train/lr`, `probe/*`) and `epoch` (`train/loss_epoch`,
`train/accuracy`, `val/*`, `train/images_per_s`, `pool/*`, `test/*`). W&B's `_step` is the global
step, so a row replayed on a resume lands on its place. Also probes.csv and model.best.pt.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from dnnlab.core.beta import beta_float, log10_beta
from dnnlab.core.table import Table
from dnnlab.train.probes import probe_metrics
from dnnlab.train.records import Callback, EpochEnd, TrainResult, best_of
from dnnlab.train.resume import save_atomic

STEP, EPOCH = "trainer/global_step", "epoch"
BEST = "model.best.pt"  # the weights of the first epoch with the best validation accuracy
# (name or glob, its step axis, the summary's aggregation)
METRICS = [
    ("train/loss", STEP, "min"), ("train/lr", STEP, "last"), ("probe/*", STEP, "max"),
    ("train/loss_epoch", EPOCH, "min"), ("train/accuracy", EPOCH, "max"),
    ("val/loss", EPOCH, "min"), ("val/accuracy", EPOCH, "max"),
    ("train/images_per_s", EPOCH, "mean"), ("pool/*", EPOCH, "last"), ("test/*", EPOCH, "last"),
    ("trainer/resumed_from_epoch", EPOCH, "last"),
]
# an epoch record's keys (results.json's history) -> their names in W&B
EPOCH_NAMES = {"epoch": EPOCH, "step": STEP, "train_loss": "train/loss_epoch",
               "train_accuracy": "train/accuracy", "val_loss": "val/loss",
               "val_accuracy": "val/accuracy", "images_per_s": "train/images_per_s"}
PROBE_COLUMNS = ["step", "layer", "type", "param", "max_abs_err", "max_rel_err"]


def wandb_config(config: dict) -> dict:
    """The run's resolved config as W&B gets it, one type per key across a sweep's runs:
    `model.pool.beta` a float (dnnlab.core.beta.beta_float: inf is 1e6, where `log10_beta` = 6
    places it; a list or "learnable" stays as it is) and `log10_beta` beside it: the axis W&B
    charts and groups use (docs/wandb.md)."""
    pool = (config.get("model") or {}).get("pool")
    if not isinstance(pool, dict) or "beta" not in pool:
        return config
    beta = beta_float(pool["beta"])
    if not isinstance(beta, float):
        return config
    model = config["model"] | {"pool": pool | {"beta": beta}}
    if isinstance(model.get("builder"), dict) and "beta" in model["builder"]:
        model["builder"] = model["builder"] | {"beta": beta_float(model["builder"]["beta"])}
    return config | {"model": model, "log10_beta": log10_beta(beta)}


def epoch_metrics(end: EpochEnd) -> dict[str, Any]:
    """The scalars of an epoch under W&B's names (the learning rate is charted per step), then
    the pooling statistics (`pool/<layer>/beta` only when beta trains: a constant is no chart)."""
    out = {EPOCH_NAMES[k]: v for k, v in end.record.items() if k in EPOCH_NAMES}
    out |= {k: v for k, v in end.pool.items() if end.learnable or not k.endswith("/beta")}
    if end.resumed_from_epoch is not None:
        out["trainer/resumed_from_epoch"] = end.resumed_from_epoch
    return out


def read_probes(path: Path) -> list[list]:
    """The rows of a probes.csv written before (numbers parsed); [] when there is none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [[int(r[0]), r[1], r[2], r[3], float(r[4]), float(r[5])] for r in rows if len(r) == 6]


class TrainLogs(Callback):
    """The W&B side of one training run."""

    def __init__(self, tracker: Any, model: torch.nn.Module, beta: Any,
                 resumed_at: int | None = None):
        """Define the metrics, add beta to the config; keep the probes up to `resumed_at`."""
        self.tracker, self.model, self.beta = tracker, model, beta
        self.run_dir = Path(tracker.run_dir)
        self.probes = [r for r in read_probes(self.run_dir / "probes.csv")
                       if resumed_at is not None and r[0] <= resumed_at]
        tracker.define_metric(STEP)
        tracker.define_metric(EPOCH)
        for name, axis, summary in METRICS:
            tracker.define_metric(name, step_metric=axis, summary=summary)
        tracker.config_update(beta=beta_float(beta), log10_beta=log10_beta(beta))

    def on_step(self, step: int, loss: float, lr: float) -> None:
        self.tracker.log({STEP: step, "train/loss": loss, "train/lr": lr}, step=step)

    def on_probe(self, step: int, rows: list[dict]) -> None:
        """The worst errors over the layers to the history; every row to the probes table."""
        self.probes += [[step] + [r[c] for c in PROBE_COLUMNS[1:]] for r in rows]
        self.tracker.log({STEP: step} | probe_metrics(rows), step=step)

    def on_epoch(self, end: EpochEnd) -> None:
        self.tracker.log(epoch_metrics(end), step=end.step)
        self.table().to_csv(self.run_dir)  # probes.csv, as the run goes
        if best_of(end.history) is end.record:  # the first best epoch: the W&B `best` model
            save_atomic(self.run_dir / BEST, {"model": self.model.state_dict(), "epoch":
                        end.record["epoch"], "step": end.step,
                        "val_accuracy": end.record["val_accuracy"]})

    def table(self) -> Table:
        return Table("probes", PROBE_COLUMNS, self.probes,
                     title="hand-written gradients vs autograd, per layer and probe step")

    def finish(self, result: TrainResult, config: dict, checkpoint: Path) -> None:
        """The test row (at the last step, on the epoch axis), the W&B summary, the probes
        table and the model artifacts: model.best.pt (alias best) and the checkpoint (latest),
        with the resolved config as metadata."""
        tr, last = self.tracker, (result.history[-1] if result.history else {})
        tr.log({EPOCH: last.get("epoch", 0), STEP: result.steps,
                "test/accuracy": result.test_accuracy, "test/loss": result.test_loss},
               step=result.steps)
        tr.summary(beta=beta_float(self.beta), log10_beta=log10_beta(self.beta), steps=result.steps,
                   epochs=result.epochs, best_val_accuracy=result.best_val_accuracy,
                   **({"train/compile_seconds": result.compile_seconds}
                      if result.compile_seconds is not None else {}))
        if self.probes:
            tr.table(self.table())
        best = best_of(result.history)
        if (self.run_dir / BEST).exists() and best is not None:
            tr.artifact("model", "model", [self.run_dir / BEST], aliases=["best"], metadata={
                "epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "config": config})
        if checkpoint.exists():
            tr.artifact("model", "model", [checkpoint], aliases=["latest"], metadata={
                "epoch": last.get("epoch"), "val_accuracy": last.get("val_accuracy"),
                "test_accuracy": result.test_accuracy, "config": config})
