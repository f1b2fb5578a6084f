"""What `fit` (dnnlab.train.loop) emits and returns: the records of a training run, for its
callbacks (dnnlab.train.logs for W&B, the pipeline's progress bar) and for results.json."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the records import no torch: a config error or --help never loads it
    from dnnlab.train.state import TrainState


@dataclass
class EpochEnd:
    record: dict  # epoch, step, train/val loss and accuracy, lr, images_per_s, pool means
    pool: dict  # pool/<layer>/... and the means (dnnlab.train.probes.pooling_stats)
    step: int
    history: list  # every record so far
    resumed_from_epoch: int | None = None  # set on the first epoch after a resume
    learnable: bool = False  # a pooling beta that trains


class Callback:
    """What `fit` emits: the state it starts from (a resumed run's history so far), the loss
    and lr every `log_every` steps, the rows of dnnlab.train.probes.compare every `probe_every`
    steps, each epoch's end (checkpoint saved)."""

    def on_start(self, state: TrainState) -> None: ...

    def on_step(self, step: int, loss: float, lr: float) -> None: ...

    def on_probe(self, step: int, rows: list[dict]) -> None: ...

    def on_epoch(self, end: EpochEnd) -> None: ...


class OnEpoch(Callback):
    """A Callback that calls `fn(end)` after each epoch."""

    def __init__(self, fn: Callable[[EpochEnd], Any]):
        self.fn = fn

    def on_epoch(self, end: EpochEnd) -> None:
        self.fn(end)


class KeepHistory(Callback):
    """`write(history)` when training starts (a resumed run's history so far) and after each
    epoch: the one writer of a job's history (results.json's `history`), so that an interrupted
    or pruned run keeps every epoch it finished."""

    def __init__(self, write: Callable[[list], Any]):
        self.write = write

    def on_start(self, state: TrainState) -> None:
        self.write(state.history)

    def on_epoch(self, end: EpochEnd) -> None:
        self.write(end.history)


@dataclass
class TrainResult:
    """The run's results (results.json, with the pipeline's model/data/beta; `to_dict` leaves
    out the history, which KeepHistory writes as training goes)."""

    test_accuracy: float
    test_loss: float
    val_accuracy: float | None
    best_val_accuracy: float | None  # what a sweeper optimizes: never a test metric
    best_epoch: int | None
    grad_entropy: float | None  # mean entropy of softmax(beta x) / log n (docs/math.md (1c))
    argmax_mass: float | None
    probe_max_abs_err: float  # hand-written gradients vs autograd, worst over the probes
    probe_max_rel_err: float
    epochs: int
    steps: int
    history: list = field(default_factory=list)
    betas: dict = field(default_factory=dict)  # {pooling layer: beta at the end}
    compile_seconds: float | None = None  # trainer.compile: the steps during which it compiled
    stopped_epoch: int | None = None  # trainer.early_stopping: the epoch it stopped after

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "history"}


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (exit_code 130) or SIGTERM (143: a KeyboardInterrupt with
    `exit_code`, as dnnlab.run.runtime raises it): the epoch and step, and the last checkpoint."""

    def __init__(self, epoch: int, step: int, checkpoint: Any, exit_code: int = 130):
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.epoch, self.step, self.checkpoint, self.exit_code = epoch, step, checkpoint, exit_code


def best_of(history: list) -> dict | None:
    """The first record with the best validation accuracy."""
    return max(history, key=lambda h: h["val_accuracy"], default=None)
