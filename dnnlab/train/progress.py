"""The terminal's view of a training run: a rich progress bar, a dnnlab.train.loop Callback."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dnnlab.train.records import Callback, EpochEnd, TrainResult


class EpochBar(Callback):
    """One step per epoch, with the epoch's loss, validation accuracy and the pooling gradient's
    entropy share (docs/math.md (1c)). Use it as a context manager around `fit`."""

    def __init__(self, epochs: int, console: Console, show: bool = True):
        self.bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} {task.fields[metrics]}"),
                            TimeElapsedColumn(), console=console, disable=not show)
        self.task = self.bar.add_task("train", total=epochs, epoch=0, metrics="")

    def __enter__(self) -> EpochBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def on_epoch(self, end: EpochEnd) -> None:
        r, h = end.record, end.pool.get("pool/entropy_rel", float("nan"))
        self.bar.update(self.task, completed=r["epoch"] + 1, epoch=r["epoch"] + 1, metrics=(
            f"loss {r['train_loss']:.3f} val_acc {r['val_accuracy']:.3f} H/Hmax {h:.2f}"))


def result_lines(result: TrainResult) -> list[str]:
    """The run's last lines: compile time if compiled, early stop, best val and test accuracy."""
    lines = []
    if result.compile_seconds is not None:
        lines.append(f"torch.compile: {result.compile_seconds:.1f} s in the steps that compiled")
    if result.stopped_epoch is not None:
        lines.append(f"early stopping after epoch {result.stopped_epoch}")
    return lines + [f"best val accuracy {result.best_val_accuracy:.4f} (epoch "
                    f"{result.best_epoch}); test accuracy {result.test_accuracy:.4f}"]
