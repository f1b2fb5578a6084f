"""The training loop: deterministic, checkpointed every epoch, resumable, stopped by a NaN.

    seed_everything(seed)                                   # before the model is built
    result = fit(model, splits, optimizer, scheduler, settings, run_dir, seed, batch_size,
                 on_step=..., on_epoch=..., on_probe=...)
    result.to_dict()                                        # results.json (without model/data)

Each epoch reshuffles the training split with a generator seeded by (seed, epoch), so a run
resumed from `checkpoint.pt` (model, optimizer, scheduler, RNG states, history) sees the same
batches as one that never stopped, and ends with the same metrics. Every
`settings.probe_every` steps the hand-written gradients of each dnnlab layer are compared with
autograd on the live batch (dnnlab.train.probes); after each epoch the pooling's gradient
statistics are measured on a fixed validation batch. Nothing here logs or prints: `on_step`
(every `settings.log_every` steps), `on_probe` and `on_epoch` receive what there is to log,
under the names W&B shows (`train/...`, `val/...`, `probe/...`, `pool/...`, with the step axes
`trainer/global_step` and `epoch`; docs/wandb.md).
"""
from __future__ import annotations

import json
import logging
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
from dnnlab.table import jsonable
from dnnlab.train.data import Splits
from dnnlab.train.probes import Capture, compare, pooling_stats
from dnnlab.train.settings import TrainerSettings

CKPT = "checkpoint.pt"
PREV = "checkpoint.prev.pt"  # the checkpoint before the last, kept until a new one is complete
BEST = "model.best.pt"  # the weights of the epoch with the best validation accuracy so far


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python's and torch's generators, ask torch for deterministic kernels and, if given,
    fix torch's CPU thread count: a CPU reduction splits its sum by thread, so 1 and 2 threads
    give different roundings (and, over an epoch, different metrics). Launchers differ in the
    count they leave (joblib's workers get cores / n_jobs), so a job sets its own."""
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


# an epoch record's keys (results.json's history) -> their names in W&B and metrics.jsonl
EPOCH_METRICS = {"epoch": "epoch", "step": "trainer/global_step", "train_loss": "train/loss_epoch",
                 "train_accuracy": "train/accuracy", "val_loss": "val/loss",
                 "val_accuracy": "val/accuracy", "images_per_s": "train/images_per_s"}


@dataclass
class EpochEnd:
    """What an epoch leaves: its history record, the pooling statistics, the step count."""

    record: dict  # epoch, step, train/val loss and accuracy, lr, images_per_s, pool means
    pool: dict  # pool/<layer>/... and the means (dnnlab.train.probes.pooling_stats)
    step: int
    history: list  # every record so far
    resumed_from_epoch: int | None = None  # set on the first epoch after a resume
    learnable: bool = False  # a pooling beta that trains: its value is worth a chart

    def metrics(self) -> dict[str, Any]:
        """The scalars to log at `step`, one name per quantity: EPOCH_METRICS of the record
        (the learning rate is charted per step, as train/lr), then the pooling statistics
        (`pool/<layer>/beta` only when beta is learnable: a constant is no chart)."""
        out = {EPOCH_METRICS[k]: v for k, v in self.record.items() if k in EPOCH_METRICS}
        out |= {k: v for k, v in self.pool.items()
                if self.learnable or not k.endswith("/beta")}
        if self.resumed_from_epoch is not None:
            out["trainer/resumed_from_epoch"] = self.resumed_from_epoch
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
    betas: dict = field(default_factory=dict)  # {pooling layer: beta at the end}
    compile_seconds: float | None = None  # trainer.compile: the steps during which it compiled

    def final(self) -> dict[str, Any]:
        """Everything but the history (the W&B summary)."""
        return {k: v for k, v in asdict(self).items() if k != "history"}

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history} | self.final()


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C / SIGINT (exit_code 130) or SIGTERM (143, when the signal
    handler raised a KeyboardInterrupt with `exit_code`, as dnnlab.runtime's does): the epoch
    and step it was in, and the last checkpoint written (None before the first epoch ended)."""

    def __init__(self, epoch: int, step: int, checkpoint: Path | None, exit_code: int = 130):
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.epoch, self.step, self.checkpoint, self.exit_code = epoch, step, checkpoint, exit_code


def _save_checkpoint(path: Path, state: dict, prev: str | None = PREV) -> None:
    """Write `path` atomically and keep the one it replaces as `prev` (unless None): the new one
    goes to a temp file, is flushed to disk, then the old one becomes the previous and the temp
    file the current. A kill at any moment leaves at least one complete checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists() and prev is not None:
            os.replace(path, path.with_name(prev))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DnnlabError(f"cannot write {path}: {err.strerror or err}") from None


def read_checkpoint(run_dir: Path) -> tuple[dict, Path, str | None]:
    """The newest readable checkpoint of a run dir: (state, its path, a warning or None).

    `checkpoint.pt` if it loads; else `checkpoint.prev.pt` (the one before it), with a warning
    naming the bad file; ConfigError naming the file(s) when neither loads or none exists."""
    cur, prev = Path(run_dir) / CKPT, Path(run_dir) / PREV
    if not cur.exists() and not prev.exists():
        raise ConfigError(f"trainer.resume=true: no checkpoint in {run_dir} "
                          "(pass the run's dir as hydra.run.dir)")
    bad = []
    for path in (cur, prev):
        if not path.exists():
            continue
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
            if not isinstance(state, dict) or not {"model", "epoch", "step", "history"} <= set(
                    state):
                raise ValueError("not a dnnlab checkpoint")
        except Exception as err:  # noqa: BLE001 - truncated, corrupt, not a checkpoint
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            bad.append(f"{path} is unreadable ({first[:100]})")
            continue
        warning = (f"{bad[0]}; resuming from {path} (after epoch {int(state['epoch'])})"
                   if bad else None)
        return state, path, warning
    raise ConfigError(f"trainer.resume=true: {'; '.join(bad)}; no good checkpoint to resume "
                      "from")


def _restore(ck: dict, model, optimizer, scheduler) -> tuple[int, list, int]:
    """Load a checkpoint into model, optimizer, scheduler and the RNGs: (epoch, history, step)."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck.get("scheduler") is not None:
        scheduler.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"]["torch"])
    py = ck["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return int(ck["epoch"]), list(ck["history"]), int(ck["step"])


def _compiled(model: torch.nn.Module) -> Any:
    """torch.compile(model) from a clean dynamo state: a process that runs several jobs (joblib's
    reused workers) would otherwise carry the previous job's graphs and cache limits over.
    torch's cpp_extension import logs a CUDA warning on CPU machines; it is not an error."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    torch._dynamo.reset()
    return torch.compile(model)


def _graphs() -> int:
    """The number of graphs dynamo has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def fit(model: torch.nn.Module, splits: Splits, optimizer: torch.optim.Optimizer,
        scheduler: Any, settings: TrainerSettings, run_dir: Path, seed: int, batch_size: int,
        on_epoch: Callable[[EpochEnd], None] | None = None,
        on_probe: Callable[[list[dict], int], None] | None = None,
        on_step: Callable[[dict, int], None] | None = None,
        checkpoint: dict | None = None, config: dict | None = None) -> TrainResult:
    """Train `model` (already on its device) for `settings.epochs` epochs, writing
    run_dir/checkpoint.pt after each (with `config`, the resolved config that made the run);
    resume from `checkpoint` (a state from `read_checkpoint`; read here when not given) if
    `settings.resume`. Every `settings.log_every` steps `on_step({"train/loss", "train/lr",
    "trainer/global_step"}, step)`; every `settings.probe_every` steps `on_probe(rows, step)`
    with the rows of dnnlab.train.probes.compare; after each epoch `on_epoch(EpochEnd)`.
    A non-finite loss stops the run (DnnlabError naming the step and the last
    good checkpoint); Ctrl-C or SIGTERM (`Terminated`) raises `Interrupted` with the epoch and
    step it stopped at and the last checkpoint."""
    device = resolve_device(settings.device)
    val_loader = DataLoader(splits.val, batch_size=256)
    test_loader = DataLoader(splits.test, batch_size=256)
    probe_x = next(iter(DataLoader(splits.val, batch_size=64)))[0].to(device)  # (64, C, H, W)

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(run_dir) / CKPT
    start, history, step, resumed = 0, [], 0, None
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    if settings.resume:
        ck = checkpoint if checkpoint is not None else read_checkpoint(run_dir)[0]
        resumed, history, step = _restore(ck, model, optimizer, scheduler)
        worst.update(ck.get("probe_worst") or {})
        start = resumed + 1
    k, every = settings.probe_every, settings.log_every
    learnable = any(getattr(m, "learnable", False) for m in model.modules())
    best = max((h["val_accuracy"] for h in history), default=-1.0)
    # torch.compile: the training steps run the compiled module (dnnlab's autograd Functions
    # trace without graph breaks, tests/train/test_compile.py); probe steps, evaluation and
    # pooling statistics run `model` itself (the same parameters), so hooks and eval mode never
    # force a recompile
    forward = _compiled(model) if settings.compile else model
    compile_seconds = None
    pool: dict = {}
    epoch = start
    try:
        for epoch in range(start, settings.epochs):
            gen = torch.Generator().manual_seed(seed * 100003 + epoch)  # same order after resume
            loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=gen)
            model.train()
            t0, seen, run_loss, run_correct = time.perf_counter(), 0, 0.0, 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)  # (B, C, H, W), (B,)
                step += 1
                cap = Capture(model) if k > 0 and step % k == 0 else None
                graphs = _graphs() if settings.compile and cap is None else None
                t_step = time.perf_counter()
                out = (model if cap is not None else forward)(x)  # (B, num_classes)
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
                if graphs is not None and _graphs() != graphs:  # this step compiled a graph
                    # (the first step, and the first short last batch of an epoch)
                    compile_seconds = (compile_seconds or 0.0) + time.perf_counter() - t_step
                seen += len(y)
                loss_value = loss.item()
                run_loss += loss_value * len(y)
                if on_step is not None and every > 0 and step % every == 0:
                    on_step({"trainer/global_step": step, "train/loss": loss_value,
                             "train/lr": optimizer.param_groups[0]["lr"]}, step)
                run_correct += (out.argmax(1) == y).sum().item()
                if cap is not None:
                    cap.close()
                    rows = compare(cap)
                    for r in rows:
                        worst["max_abs_err"] = max(worst["max_abs_err"], r["max_abs_err"])
                        worst["max_rel_err"] = max(worst["max_rel_err"], r["max_rel_err"])
                    if on_probe is not None:
                        on_probe(rows, step)
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
                "epoch": epoch, "step": step, "history": history, "probe_worst": dict(worst),
                "config": json.dumps(jsonable(config)) if config is not None else None})
            if rec["val_accuracy"] > best:  # the best weights so far (the W&B `best` model)
                best = rec["val_accuracy"]
                _save_checkpoint(Path(run_dir) / BEST, {
                    "model": model.state_dict(), "epoch": epoch, "step": step,
                    "val_accuracy": best}, prev=None)
            if on_epoch is not None:
                on_epoch(EpochEnd(rec, pool, step, history,
                                  resumed if epoch == start and resumed is not None else None,
                                  learnable))
    except Interrupted:
        raise
    except KeyboardInterrupt as err:
        last = ckpt_path if ckpt_path.exists() else None
        raise Interrupted(epoch, step, last, getattr(err, "exit_code", 130)) from None
    if not pool:  # nothing left to train (resumed at its last epoch): measure the model as it is
        pool = pooling_stats(model, probe_x)
    test = evaluate(model, test_loader, device)
    return TrainResult(
        test_accuracy=test["accuracy"], test_loss=test["loss"],
        val_accuracy=history[-1]["val_accuracy"] if history else None,
        grad_entropy=pool.get("pool/entropy_rel"), argmax_mass=pool.get("pool/argmax_mass"),
        probe_max_abs_err=worst["max_abs_err"], probe_max_rel_err=worst["max_rel_err"],
        epochs=settings.epochs, steps=step, history=history, betas=pool_betas(pool),
        compile_seconds=compile_seconds)


def pool_betas(pool: dict) -> dict[str, float]:
    """{layer: beta} from the pooling statistics (the learned values for a learnable beta)."""
    return {k[len("pool/"):-len("/beta")]: v for k, v in pool.items()
            if k.startswith("pool/") and k.endswith("/beta")}
