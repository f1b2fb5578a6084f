"""The training loop: deterministic, checkpointed every epoch, resumable, stopped by a NaN.

    seed_everything(seed, threads)                        # before the model is built
    result = fit(model, Batches(splits, 64, seed), optimizer, scheduler, settings,
                 callbacks=[logs], checkpoint=Checkpoint(run_dir / "checkpoint.pt", config))

Each epoch reshuffles the training split with a generator seeded by (seed, epoch), so a run
resumed from its checkpoint (model, optimizer, scheduler, RNG states, history) sees the same
batches as one that never stopped, and ends with the same metrics. Every `probe_every` steps the
hand-written gradients of each dnnlab layer are compared with autograd on the live batch
(dnnlab.train.probes); after each epoch the pooling's gradient statistics are measured on a
fixed validation batch. Nothing here logs, prints or names a file: the callbacks receive the
records, and `fit` returns them.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dnnlab.errors import ConfigError, DnnlabError, ShapeError
from dnnlab.torch_private import graphs_compiled
from dnnlab.train.data import Splits
from dnnlab.train.probes import Capture, compare, pooling_stats
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import TrainerSettings


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python's and torch's generators, ask for deterministic kernels and, if given, fix
    torch's CPU thread count: a CPU reduction splits its sum by thread, so 1 and 2 threads
    round differently, and launchers leave different counts (joblib: cores / n_jobs)."""
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:<i>` or `auto` (cuda when present); ConfigError naming
    trainer.device when it is unknown or CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device: unknown device '{name}'") from None


def check_fits(model: torch.nn.Module, splits: Splits, model_name: str, data_name: str,
               num_classes: int) -> None:
    """One line when the network cannot take the data's images (naming the layer; run on
    meta) or the labels do not fit its `num_classes` outputs."""
    from dnnlab.opcount import count_ops

    shape = [1, splits.channels, splits.image_size, splits.image_size]
    try:
        count_ops(model, shape)
    except ShapeError as err:
        raise ShapeError(f"model={model_name} cannot take data={data_name} images "
                         f"{shape[1:]}: {err}") from None
    if splits.num_classes > num_classes:
        raise ConfigError(f"data.num_classes={num_classes}: data={data_name} has labels 0 .. "
                          f"{splits.num_classes - 1} ({splits.num_classes} classes); set "
                          f"data.num_classes={splits.num_classes}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Mean cross-entropy and accuracy over a loader (eval mode)."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)  # (B, num_classes)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}


@dataclass
class Batches:
    """The data as the loop sees it: the splits, the batch size, and the seed of the shuffles."""

    splits: Splits
    batch_size: int
    seed: int = 0

    def train(self, epoch: int) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)  # same after a resume
        return DataLoader(self.splits.train, batch_size=self.batch_size, shuffle=True,
                          generator=gen)


@dataclass
class EpochEnd:
    """What an epoch leaves: its record, the pooling statistics, the step count."""

    record: dict  # epoch, step, train/val loss and accuracy, lr, images_per_s, pool means
    pool: dict  # pool/<layer>/... and the means (dnnlab.train.probes.pooling_stats)
    step: int
    history: list  # every record so far
    resumed_from_epoch: int | None = None  # set on the first epoch after a resume
    learnable: bool = False  # a pooling beta that trains


class Callback:
    """What `fit` emits; override any of the three."""

    def on_step(self, step: int, loss: float, lr: float) -> None:
        """Every `log_every` steps: the batch's loss and the learning rate."""

    def on_probe(self, step: int, rows: list[dict]) -> None:
        """Every `probe_every` steps: the rows of dnnlab.train.probes.compare."""

    def on_epoch(self, end: EpochEnd) -> None:
        """After each epoch's evaluation (and its checkpoint)."""


@dataclass
class TrainResult:
    """The run's results (results.json, with the pipeline's model/data/beta)."""

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

    def final(self) -> dict[str, Any]:
        """Everything but the history (the W&B summary)."""
        return {k: v for k, v in asdict(self).items() if k != "history"}

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history} | self.final()


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (exit_code 130) or SIGTERM (143: a KeyboardInterrupt with
    `exit_code`, as dnnlab.runtime raises it): the epoch and step, and the last checkpoint."""

    def __init__(self, epoch: int, step: int, checkpoint: Any, exit_code: int = 130):
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.epoch, self.step, self.checkpoint, self.exit_code = epoch, step, checkpoint, exit_code


def _restore(ck: dict, model, optimizer, scheduler) -> None:
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck.get("scheduler") is not None:
        scheduler.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"]["torch"])
    py = ck["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def best_of(history: list) -> dict | None:
    """The first record with the best validation accuracy."""
    return max(history, key=lambda h: h["val_accuracy"], default=None)


def fit(model: torch.nn.Module, data: Batches, optimizer: torch.optim.Optimizer,
        scheduler: Any, settings: TrainerSettings, callbacks: Sequence[Callback] = (),
        checkpoint: Checkpoint | None = None) -> TrainResult:
    """Train `model` (already on its device) for `settings.epochs` epochs, from
    `checkpoint.start` when it holds a state, saving the checkpoint after each epoch. A
    non-finite loss stops the run (DnnlabError naming the step and the last good checkpoint);
    Ctrl-C or SIGTERM raises `Interrupted`."""
    device = resolve_device(settings.device)
    val_loader = DataLoader(data.splits.val, batch_size=256)
    probe_x = next(iter(DataLoader(data.splits.val, batch_size=64)))[0].to(device)  # (64,C,H,W)
    start, history, step, resumed = 0, [], 0, None
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    ck = checkpoint.start if checkpoint is not None else None
    if ck is not None:
        _restore(ck, model, optimizer, scheduler)
        resumed, history, step = int(ck["epoch"]), list(ck["history"]), int(ck["step"])
        worst.update(ck.get("probe_worst") or {})
        start = resumed + 1
    k, every = settings.probe_every, settings.log_every
    learnable = any(getattr(m, "learnable", False) for m in model.modules())
    # the training steps run the compiled module; probe steps, evaluation and pooling
    # statistics run `model` itself (the same parameters), so hooks never force a recompile
    if settings.compile:
        torch.compiler.reset()  # a reused worker process must not carry a job's graphs over
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA"
    forward = torch.compile(model) if settings.compile else model
    compile_seconds, pool, epoch = None, {}, start
    try:
        for epoch in range(start, settings.epochs):
            model.train()
            t0, seen, run_loss, run_correct = time.perf_counter(), 0, 0.0, 0
            for x, y in data.train(epoch):
                x, y = x.to(device), y.to(device)  # (B, C, H, W), (B,)
                step += 1
                cap = Capture(model) if k > 0 and step % k == 0 else None
                graphs = graphs_compiled() if settings.compile and cap is None else None
                t_step = time.perf_counter()
                out = (model if cap is not None else forward)(x)  # (B, num_classes)
                loss = F.cross_entropy(out, y)
                if not torch.isfinite(loss):
                    if cap is not None:
                        cap.close()
                    last = (checkpoint.path if checkpoint is not None and checkpoint.path.exists()
                            else "none (first epoch)")
                    raise DnnlabError(f"loss is {loss.item()} at epoch {epoch} step {step} "
                                      f"(optimizer.lr={optimizer.param_groups[0]['lr']:g}); "
                                      f"stopped. Last good checkpoint: {last}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if graphs is not None and graphs_compiled() != graphs:  # this step compiled
                    compile_seconds = (compile_seconds or 0.0) + time.perf_counter() - t_step
                seen += len(y)
                run_loss += loss.item() * len(y)
                run_correct += (out.argmax(1) == y).sum().item()
                if every > 0 and step % every == 0:
                    for cb in callbacks:
                        cb.on_step(step, loss.item(), optimizer.param_groups[0]["lr"])
                if cap is not None:
                    cap.close()
                    rows = compare(cap)
                    for r in rows:
                        worst["max_abs_err"] = max(worst["max_abs_err"], r["max_abs_err"])
                        worst["max_rel_err"] = max(worst["max_rel_err"], r["max_rel_err"])
                    for cb in callbacks:
                        cb.on_probe(step, rows)
            dt = time.perf_counter() - t0
            if scheduler is not None:
                scheduler.step()
            val = evaluate(model, val_loader, device)
            pool = pooling_stats(model, probe_x)
            rec = {"epoch": epoch, "step": step, "train_loss": run_loss / seen,
                   "train_accuracy": run_correct / seen, "val_loss": val["loss"],
                   "val_accuracy": val["accuracy"], "lr": optimizer.param_groups[0]["lr"],
                   "images_per_s": seen / dt}
            rec.update({key: v for key, v in pool.items() if key.count("/") == 1})
            history.append(rec)
            if checkpoint is not None:
                checkpoint.save({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
                    "epoch": epoch, "step": step, "history": history,
                    "probe_worst": dict(worst)})
            end = EpochEnd(rec, pool, step, history, resumed if epoch == start else None,
                           learnable)
            for cb in callbacks:
                cb.on_epoch(end)
    except Interrupted:
        raise
    except KeyboardInterrupt as err:
        last = checkpoint.path if checkpoint is not None and checkpoint.path.exists() else None
        raise Interrupted(epoch, step, last, getattr(err, "exit_code", 130)) from None
    if not pool:  # nothing left to train (resumed at its last epoch): measure the model as it is
        pool = pooling_stats(model, probe_x)
    test = evaluate(model, DataLoader(data.splits.test, batch_size=256), device)
    best = best_of(history)
    return TrainResult(
        test_accuracy=test["accuracy"], test_loss=test["loss"],
        val_accuracy=history[-1]["val_accuracy"] if history else None,
        best_val_accuracy=best["val_accuracy"] if best else None,
        best_epoch=best["epoch"] if best else None,
        grad_entropy=pool.get("pool/entropy_rel"), argmax_mass=pool.get("pool/argmax_mass"),
        probe_max_abs_err=worst["max_abs_err"], probe_max_rel_err=worst["max_rel_err"],
        epochs=settings.epochs, steps=step, history=history, betas=pool_betas(pool),
        compile_seconds=compile_seconds)


def pool_betas(pool: dict) -> dict[str, float]:
    """{layer: beta} from the pooling statistics (the learned values for a learnable beta)."""
    return {k[len("pool/"):-len("/beta")]: v for k, v in pool.items()
            if k.startswith("pool/") and k.endswith("/beta")}
