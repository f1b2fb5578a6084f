"""The training pipeline's settings: the schema of conf/train.yaml (dnnlab.run.config registers
it as `train_schema`), typed so that Hydra rejects a wrong type while composing and `__post_init__`
rejects a bad value, each with the key (`trainer.epochs=0: must be >= 1`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dnnlab.core.errors import MISSING, require

# The keys that do not change an experiment: how a run is shown, resumed, checkpointed and split
# over processes, where it writes. The one declaration behind a resume's check (MAY_CHANGE), the
# run dir's name (conf/hydra/default.yaml's exclude_keys, through the resolver
# `dnnlab_same_experiment` of dnnlab.run.hydra_job) and the W&B run name (dnnlab.run.naming).
SAME_EXPERIMENT = ("trainer.resume", "trainer.progress", "trainer.checkpoint_every",
                   "trainer.processes", "wandb.mode", "wandb.watch.log", "wandb.watch.log_freq",
                   "paths.root_dir", "paths.output_dir", "hydra.run.dir", "hydra.sweep.dir")
MAY_CHANGE = ("trainer.epochs", *SAME_EXPERIMENT)  # a resume may also train longer


@dataclass
class DataConfig:
    """conf/data/<name>.yaml: what the network sees, and `dataset`, the `_target_` spec of the
    builder in dnnlab.train.data that makes the splits (called with `root=paths.data_dir`)."""

    name: str = "digits"
    batch_size: int = 64
    channels: int = 1
    num_classes: int = 10
    image_size: int = 8
    dataset: Any = field(default_factory=lambda: {"_target_": "dnnlab.train.data.digits"})

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be a positive int")
        for key in ("channels", "num_classes", "image_size"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        require(isinstance(self.dataset, dict) and "_target_" in self.dataset, "dataset",
                self.dataset, "expected a `_target_` (a builder in dnnlab.train.data) and its "
                "arguments")


@dataclass
class EarlyStopping:
    """trainer.early_stopping: stop when `monitor` (a key of the epoch records: val_loss,
    val_accuracy, train_loss, ...) has not improved for `patience` epochs; off when null."""

    monitor: str | None = None
    patience: int = 3
    mode: str = "min"  # min | max
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        require(self.patience >= 1, "patience", self.patience, "must be >= 1")
        require(self.mode in ("min", "max"), "mode", self.mode,
                "expected min or max")
        require(self.monitor in (None,) + MONITORS, "monitor", self.monitor,
                f"expected one of {', '.join(MONITORS)} (or null: off)")


MONITORS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy")
PRECISIONS = ("32", "bf16", "fp16")


@dataclass
class TrainerSettings:
    """conf/trainer/default.yaml: the loop (dnnlab.train.loop.fit)."""

    epochs: int = 10
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:<i>: where the run's
    # model is built (dnnlab.run.models.build_training); `fit` trains a model where it is
    probe_every: int = 20  # every K steps: hand-written gradients vs autograd (0: never)
    log_every: int = 1  # every N steps: train/loss and train/lr to W&B (0: never)
    # auto: continue from checkpoint.pt when the run dir holds one of this config (skip a run
    # that is done), else start; true: continue or refuse; false: start over
    resume: Any = "auto"
    checkpoint_every: int = 0  # also save the checkpoint every N steps within an epoch (0: off)
    progress: bool = True  # a progress bar (drawn by the pipeline)
    threads: int = 1  # torch's CPU threads: fixed, so every launcher gives the same metrics
    processes: int = 1  # N > 1: one run on N processes of this machine (torch's elastic launch)
    compile: bool = False  # the training step's forward (and its backward) through torch.compile
    precision: str = "32"  # 32 | bf16 (torch.autocast, CPU and CUDA) | fp16 (CUDA, GradScaler)
    accumulate: int = 1  # K loader batches (micro-batches) per optimizer step
    grad_clip: float | None = None  # clip the gradients' global norm to this (null: off)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    limit_batches: int = 0  # at most N batches of train, val and test per epoch (0: all)
    overfit_batches: int = 0  # N>0: train on the first N batches, the same each epoch, and
    #                           validate and test on them (debug=overfit)

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        require(self.threads >= 1, "threads", self.threads, "must be >= 1")
        require(self.processes >= 1, "processes", self.processes,
                "must be >= 1 (N > 1: N processes of one run)")
        require(self.log_every >= 0, "log_every", self.log_every,
                "must be >= 0 (0: no per-step rows)")
        require(self.probe_every >= 0, "probe_every", self.probe_every,
                "must be >= 0 (0: no probes)")
        require(self.resume in (True, False, "auto"), "resume", self.resume,
                "expected true, false or auto")
        require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
                "must be >= 0 (0: at epoch ends only)")
        self.precision = str(self.precision)
        require(self.precision in PRECISIONS, "precision", self.precision,
                "expected 32, bf16 or fp16")
        require(self.accumulate >= 1, "accumulate", self.accumulate, "must be >= 1")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip,
                "must be > 0 (or null: off)")
        require(self.limit_batches >= 0, "limit_batches", self.limit_batches,
                "must be >= 0 (0: all)")
        require(self.overfit_batches >= 0, "overfit_batches", self.overfit_batches,
                "must be >= 0 (0: off)")


@dataclass
class TrainSettings:
    """conf/train.yaml: seed, data, model, optimizer, scheduler and trainer. The model, the
    optimizer and the scheduler are `_target_` specs (the optimizer and scheduler `_partial_`:
    they get the parameters / the optimizer when the pipeline builds them)."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
