"""The training loop: deterministic, checkpointed every epoch, resumable, stopped by a NaN.

    seed_everything(seed)                                   # before the model is built
    result = fit(model, splits, optimizer, scheduler, settings, run_dir, seed, batch_size,
                 on_epoch=..., on_probe=...)
    result.to_dict()                                        # results.json (without model/data)

Each epoch reshuffles the training split with a generator seeded by (seed, epoch), so a run
resumed from `checkpoint.pt` (model, optimizer, scheduler, RNG states, history) sees the same
batches as one that never stopped, and ends with the same metrics. Every
`settings.probe_every` steps the hand-written gradients of each dnnlab layer are compared with
autograd on the live batch (dnnlab.train.probes); after each epoch the pooling's gradient
statistics are measured on a fixed validation batch. Nothing here logs or prints: `on_probe`
and `on_epoch` receive what there is to log.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dnnlab.errors import ConfigError, DnnlabError, ShapeError
from dnnlab.train.data import Splits
from dnnlab.train.probes import Capture, compare, pooling_stats, probe_metrics
from dnnlab.train.settings import TrainerSettings

CKPT = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators and ask torch for deterministic kernels."""
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


def check_fits(model: torch.nn.Module, splits: Splits, model_name: str, data_name: str) -> None:
    """A network that cannot take the data's images: one line naming the layer (run on meta)."""
    from dnnlab.opcount import count_ops

    shape = [1, splits.channels, splits.image_size, splits.image_size]
    try:
        count_ops(model, shape)
    except ShapeError as err:
        raise ShapeError(f"model={model_name} cannot take data={data_name} images "
                         f"{shape[1:]}: {err}") from None


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
class EpochEnd:
    """What an epoch leaves: its history record, the pooling statistics, the step count."""

    record: dict  # epoch, step, train/val loss and accuracy, lr, images_per_s, pool means
    pool: dict  # pool/<layer>/... and the means (dnnlab.train.probes.pooling_stats)
    step: int
    history: list  # every record so far
    resumed_from_epoch: int | None = None  # set on the first epoch after a resume

    def metrics(self) -> dict[str, Any]:
        """The scalars to log at `step`: epoch/<key> for the record, the pooling statistics."""
        out = {f"epoch/{k}" if k != "epoch" else k: v for k, v in self.record.items()
               if not isinstance(v, str)} | self.pool
        if self.resumed_from_epoch is not None:
            out["resumed_from_epoch"] = self.resumed_from_epoch
        return out


@dataclass
class TrainResult:
    """The run's results (results.json, with the pipeline's model/data/beta)."""

    test_accuracy: float
    test_loss: float
    val_accuracy: float | None
    grad_entropy: float | None  # mean entropy of softmax(beta x) / log n (docs/math.md (1c))
    argmax_mass: float | None
    probe_max_abs_err: float  # hand-written gradients vs autograd, worst over the probes
    probe_max_rel_err: float
    epochs: int
    steps: int
    history: list = field(default_factory=list)

    def final(self) -> dict[str, Any]:
        """Everything but the history (the W&B summary)."""
        return {k: v for k, v in asdict(self).items() if k != "history"}

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history} | self.final()


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill -9 never leaves half a checkpoint


def _resume(path: Path, model, optimizer, scheduler, device) -> tuple[int, list, int]:
    """Load the checkpoint into model, optimizer, scheduler and the RNGs: (epoch, history, step)."""
    if not path.exists():
        raise ConfigError(f"trainer.resume=true: no checkpoint at {path} "
                          "(pass the run's hydra.run.dir)")
    ck = torch.load(path, weights_only=True, map_location=device)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck.get("scheduler") is not None:
        scheduler.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"]["torch"])
    py = ck["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return int(ck["epoch"]), list(ck["history"]), int(ck["step"])


def fit(model: torch.nn.Module, splits: Splits, optimizer: torch.optim.Optimizer,
        scheduler: Any, settings: TrainerSettings, run_dir: Path, seed: int, batch_size: int,
        on_epoch: Callable[[EpochEnd], None] | None = None,
        on_probe: Callable[[dict, int], None] | None = None) -> TrainResult:
    """Train `model` (already on its device) for `settings.epochs` epochs, writing
    run_dir/checkpoint.pt after each; resume from it if `settings.resume`. A non-finite loss
    stops the run (DnnlabError naming the step and the last good checkpoint)."""
    device = resolve_device(settings.device)
    val_loader = DataLoader(splits.val, batch_size=256)
    test_loader = DataLoader(splits.test, batch_size=256)
    probe_x = next(iter(DataLoader(splits.val, batch_size=64)))[0].to(device)  # (64, C, H, W)

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(run_dir) / CKPT
    start, history, step, resumed = 0, [], 0, None
    if settings.resume:
        resumed, history, step = _resume(ckpt_path, model, optimizer, scheduler, device)
        start = resumed + 1
    k = settings.probe_every
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    pool: dict = {}
    for epoch in range(start, settings.epochs):
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)  # same order after resume
        loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=gen)
        model.train()
        t0, seen, run_loss, run_correct = time.perf_counter(), 0, 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)  # (B, C, H, W), (B,)
            step += 1
            cap = Capture(model) if k > 0 and step % k == 0 else None
            out = model(x)  # (B, num_classes)
            loss = F.cross_entropy(out, y)
            if not torch.isfinite(loss):
                if cap is not None:
                    cap.close()
                last = ckpt_path if ckpt_path.exists() else "none (first epoch)"
                raise DnnlabError(f"loss is {loss.item()} at epoch {epoch} step {step} "
                                  f"(optimizer.lr={optimizer.param_groups[0]['lr']:g}); "
                                  f"stopped. Last good checkpoint: {last}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
            run_loss += loss.item() * len(y)
            run_correct += (out.argmax(1) == y).sum().item()
            if cap is not None:
                cap.close()
                rows = compare(cap)
                for r in rows:
                    worst["max_abs_err"] = max(worst["max_abs_err"], r["max_abs_err"])
                    worst["max_rel_err"] = max(worst["max_rel_err"], r["max_rel_err"])
                if on_probe is not None:
                    on_probe(probe_metrics(rows), step)
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
        _save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
            "epoch": epoch, "step": step, "history": history})
        if on_epoch is not None:
            on_epoch(EpochEnd(rec, pool, step, history,
                              resumed if epoch == start and resumed is not None else None))
    test = evaluate(model, test_loader, device)
    return TrainResult(
        test_accuracy=test["accuracy"], test_loss=test["loss"],
        val_accuracy=history[-1]["val_accuracy"] if history else None,
        grad_entropy=pool.get("pool/entropy_rel"), argmax_mass=pool.get("pool/argmax_mass"),
        probe_max_abs_err=worst["max_abs_err"], probe_max_rel_err=worst["max_rel_err"],
        epochs=settings.epochs, steps=step, history=history)
