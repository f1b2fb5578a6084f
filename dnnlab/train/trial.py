"""Pruning, the training side: a loop Callback that hands each epoch's validation accuracy to a
`report(epoch, value) -> prune?` function (dnnlab.run.trial.TrialLink.report under
experiment=search) and raises `Pruned` at the end of the epoch the pruner stops. The epoch's
checkpoint and records are written before (this callback goes last), so a pruned run keeps its
history. No Optuna here: the training code knows only the function it is handed.
"""
from __future__ import annotations

from collections.abc import Callable

from dnnlab.train.records import Callback, EpochEnd


class Pruned(Exception):
    """The search's pruner stopped the run after `epoch` (not an error: results.json says
    `status: pruned`)."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned after epoch {epoch} (val_accuracy {value:.4f})")
        self.epoch, self.value = epoch, value


class ReportToTrial(Callback):
    """After each epoch: `report(epoch, val_accuracy)`; `Pruned` when it returns True."""

    def __init__(self, report: Callable[[int, float], bool]):
        self.report = report

    def on_epoch(self, end: EpochEnd) -> None:
        epoch, value = int(end.record["epoch"]), float(end.record["val_accuracy"])
        if self.report(epoch, value):
            raise Pruned(epoch, value)
