"""The training loop: deterministic, checkpointed every epoch (and every `checkpoint_every`
steps), resumable at either, stopped by a NaN.

    seed_everything(seed, threads)                        # before the model is built
    result = fit(model, Batches(splits, 64, seed), optimizer, scheduler, settings,
                 callbacks=[logs], checkpoint=Checkpoint(run_dir / "checkpoint.pt", config))

Each epoch shuffles with a generator seeded by (seed, epoch), so a run resumed from its
checkpoint sees the batches of one that never stopped and ends with the same metrics. Every
`probe_every` steps each dnnlab layer's hand-written gradients are compared with autograd
(dnnlab.train.probes); after each epoch the pooling's gradient statistics are measured on a
fixed validation batch. Nothing here logs, prints or names a file: callbacks get the records.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dnnlab.core.distributed import World
from dnnlab.core.errors import ConfigError, DnnlabError
from dnnlab.core.torch_private import graphs_compiled
from dnnlab.train.data import Batches
from dnnlab.train.losses import Pending
from dnnlab.train.probes import Capture, compare, pooling_stats
from dnnlab.train.records import Callback, EpochEnd, Interrupted, TrainResult, best_of
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import EarlyStopping, TrainerSettings
from dnnlab.train.state import Partial, TrainState
from dnnlab.train.step import Stepper, groups


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python and torch, ask for deterministic kernels, and fix the CPU thread count if
    given (a reduction splits its sum by thread; launchers leave different counts)."""
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:<i>` or `auto` (cuda when present); else ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device: unknown device '{name}'") from None


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, device: torch.device,
             world: World | None = None) -> dict:
    """Mean cross-entropy and accuracy over a loader (eval mode); under several processes each
    rank takes its share of every batch and the sums are reduced over the ranks."""
    world = world or World()
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, n
    for x, y in loader:
        lo, hi = world.share(len(y))
        x, y = x[lo:hi].to(device), y[lo:hi].to(device)
        out = model(x).float()  # (b, num_classes)
        sums += torch.stack([F.cross_entropy(out, y, reduction="sum").double(),
                             (out.argmax(1) == y).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    loss, correct, n = world.all_sum(sums).tolist()
    return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}


def stopped(history: list, es: EarlyStopping) -> bool:
    """Early stopping: `es.monitor` has not improved by `min_delta` for `patience` epochs."""
    if es.monitor is None or len(history) <= es.patience:
        return False
    values = [h[es.monitor] for h in history]
    sign = 1.0 if es.mode == "max" else -1.0
    best_before = max(sign * v for v in values[:-es.patience])
    return all(sign * v <= best_before + es.min_delta for v in values[-es.patience:])


def _peer_died(world: World) -> bool:
    """After an error of a distributed run: whether another rank's process is gone (looked
    for during a second; torchrun's SIGTERM to the survivors is ignored meanwhile)."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(10):
        if world.dead():
            return True
        time.sleep(0.1)
    return False


def _limit(batches: Iterable, n: int) -> Iterable:
    return itertools.islice(batches, n) if n > 0 else batches


def _last(checkpoint: Checkpoint | None) -> Any:
    return checkpoint.path if checkpoint is not None and checkpoint.path.exists() else None


@dataclass
class Trainer:
    """What every epoch of a `fit` uses, fixed for the run: the model (trained as `trained`,
    DDP-wrapped or not, through `forward`, maybe compiled), its optimizer and scheduler, the
    batches and loaders, the callbacks and the checkpoint. Evaluation and the pooling
    statistics run `model` itself (the same parameters); a probe's hooks sit on its layers."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    settings: TrainerSettings
    callbacks: Sequence[Callback]
    checkpoint: Checkpoint | None
    world: World
    device: torch.device
    train_batches: Callable[[int], Iterable]  # epoch -> its batches
    val_loader: Iterable
    test_loader: Iterable
    probe_x: torch.Tensor  # (64, C, H, W): the fixed batch of the pooling statistics
    trained: torch.nn.Module
    forward: Callable
    stepper: Stepper
    compile_seconds: float | None = None  # trainer.compile: the steps during which it compiled
    epoch: int = 0  # the epoch in progress (or the next one): what an interruption names
    pending: Pending = field(default_factory=Pending)  # the losses not read yet

    @classmethod
    def build(cls, model: torch.nn.Module, data: Batches, optimizer: torch.optim.Optimizer,
              scheduler: Any, settings: TrainerSettings, callbacks: Sequence[Callback],
              checkpoint: Checkpoint | None, world: World) -> Trainer:
        """The model on its device (one CUDA device per rank), wrapped and compiled as set."""
        device = world.device(_device_of(model))
        val_set, test_set, train_batches = data.splits.val, data.splits.test, data.train
        if settings.overfit_batches:  # the same first batches every epoch, as val and test too
            fixed = list(itertools.islice(DataLoader(data.splits.train,
                                                     batch_size=data.batch_size),
                                          settings.overfit_batches))
            train_batches = lambda epoch: fixed  # noqa: E731
            val_loader = test_loader = fixed
        else:
            val_loader = list(_limit(DataLoader(val_set, batch_size=256),
                                     settings.limit_batches))
            test_loader = _limit(DataLoader(test_set, batch_size=256), settings.limit_batches)
        probe_x = next(iter(DataLoader(val_set, batch_size=64)))[0].to(device)  # (64,C,H,W)
        model.to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None) if world.active else None
        if settings.compile:
            torch.compiler.reset()  # a reused worker process must not carry a job's graphs over
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA"
        trained = ddp if ddp is not None else model
        forward = torch.compile(trained) if settings.compile else trained
        stepper = Stepper(optimizer, settings, world, device, model.parameters(), ddp)
        return cls(model, optimizer, scheduler, settings, list(callbacks), checkpoint, world,
                   device, train_batches, val_loader, test_loader, probe_x, trained, forward,
                   stepper)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def _device_of(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for one with neither)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def start(t: Trainer) -> TrainState:
    """A new state, or the checkpoint's (`checkpoint.start`) with the model, optimizer,
    scheduler and RNGs restored; the callbacks get it (`on_start`)."""
    ck = t.checkpoint.start if t.checkpoint is not None else None
    state = TrainState.from_dict(ck) if ck is not None else TrainState()
    if ck is not None:
        t.model.load_state_dict(ck["model"])
        t.optimizer.load_state_dict(ck["optimizer"])
        if t.scheduler is not None and ck.get("scheduler") is not None:
            t.scheduler.load_state_dict(ck["scheduler"])
        state.restore_rng()
    for cb in t.callbacks:
        cb.on_start(state)
    return state


def save(t: Trainer, state: TrainState) -> None:
    """The checkpoint of `state` (rank 0 only): after epoch `state.epoch`, or within the next one
    (`state.partial`). No per-rank state: a resume may use another number of processes."""
    if t.checkpoint is not None and t.world.is_main:
        state.capture_rng()
        s = t.scheduler
        t.checkpoint.save({"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                           "scheduler": s.state_dict() if s is not None else None}
                          | state.to_dict())


def _train_step(t: Trainer, state: TrainState, group: list, epoch: int) -> dict:
    """One optimizer step on `group`, probed every `probe_every` steps: Stepper.step's
    {"sums": (loss, correct) on the device, "n"}. Its loss waits in `t.pending` until read."""
    state.step += 1
    k = t.settings.probe_every if t.world.is_main else 0
    cap = Capture(t.model) if k > 0 and state.step % k == 0 else None
    graphs = graphs_compiled() if t.settings.compile and cap is None else None
    t_step = time.perf_counter()
    try:
        sums = t.stepper.step(group, t.trained if cap is not None else t.forward)
    finally:
        if cap is not None:  # a probe's hooks, also when the step stopped half-way
            cap.close()
    t.pending.add(state.step, epoch, t.lr, sums["sums"][0], sums["n"])
    if graphs is not None and graphs_compiled() != graphs:  # this step compiled
        t.compile_seconds = (t.compile_seconds or 0.0) + time.perf_counter() - t_step
    if cap is not None:  # its rows wait with the losses, handed over after its step's loss
        t.pending.probes.append((state.step, state, compare(cap)))
    if t.pending.due():
        read_losses(t)
    return sums


def read_losses(t: Trainer, check: bool = True) -> None:
    """Read the waiting losses (one host sync) and hand every `log_every`-th to the callbacks,
    in step order, each followed by its step's probe rows if it was probed. A non-finite loss
    is a DnnlabError naming its step (`check=False`, on the way out of an interrupted run: the
    finite ones are handed over, the rest dropped)."""
    every, probes = t.settings.log_every, t.pending.probes
    for step, epoch, lr, loss in t.pending.take():
        if not math.isfinite(loss):
            if not check:
                return
            raise DnnlabError(f"loss is {loss} at epoch {epoch} step {step} "
                              f"(optimizer.lr={lr:g}); stopped. Last good checkpoint: "
                              f"{_last(t.checkpoint) or 'none (first epoch)'}")
        if every > 0 and step % every == 0:
            for cb in t.callbacks:
                cb.on_step(step, loss, lr)
        while probes and probes[0][0] == step:
            _, state, rows = probes.pop(0)
            state.probed(rows)
            for cb in t.callbacks:
                cb.on_probe(step, rows)


def run_epoch(t: Trainer, state: TrainState) -> dict:
    """Train epoch `state.next_epoch` (from its `partial` steps if begun: the same shuffle, so
    those are skipped), checkpointing every `checkpoint_every` steps; step the scheduler,
    evaluate, append the epoch's record to the history. Returns the pooling statistics."""
    epoch = t.epoch = state.next_epoch
    t.model.train()
    part = state.partial or Partial(0, 0, 0.0, 0, 0.0)
    state.partial, t0 = None, time.perf_counter() - part.seconds
    # the epoch's running sums (loss, correct) on the device, in float64 as the steps' sums
    total = torch.tensor([part.loss, float(part.correct)], dtype=torch.float64, device=t.device)
    steps, seen = part.steps, part.seen
    batches = _limit(t.train_batches(epoch), t.settings.limit_batches)
    for i, group in enumerate(groups(batches, t.settings.accumulate)):
        if i < part.steps:  # trained before the resume
            continue
        sums = _train_step(t, state, group, epoch)
        total += sums["sums"]
        steps, seen = i + 1, seen + sums["n"]
        if t.settings.checkpoint_every and state.step % t.settings.checkpoint_every == 0:
            read_losses(t)  # a non-finite loss stops the run before it is saved
            loss, correct = total.tolist()
            state.partial = Partial(steps, seen, loss, int(round(correct)),
                                    time.perf_counter() - t0)
            save(t, state)
            state.partial = None
    read_losses(t)
    loss, correct = total.tolist()
    dt = time.perf_counter() - t0
    if t.scheduler is not None:
        t.scheduler.step()
    val = evaluate(t.model, t.val_loader, t.device, t.world)
    pool = pooling_stats(t.model, t.probe_x)
    n = max(seen, 1)
    rec = {"epoch": epoch, "step": state.step, "train_loss": loss / n,
           "train_accuracy": int(round(correct)) / n, "val_loss": val["loss"],
           "val_accuracy": val["accuracy"], "lr": t.lr, "images_per_s": seen / dt}
    rec.update({key: v for key, v in pool.items() if key.count("/") == 1})
    state.history.append(rec)
    state.epoch = epoch
    return pool


def _stop(err: BaseException, t: Trainer, state: TrainState) -> BaseException:
    """What a Ctrl-C, SIGTERM or lost process group during training raises: a DnnlabError
    when another rank died, the RuntimeError itself, else `Interrupted`."""
    # a launcher stops the survivors of a dead rank with SIGTERM; SIGINT is a user's Ctrl-C
    # (sent to every rank: a peer gone then is no crash)
    by_user = isinstance(err, KeyboardInterrupt) and getattr(err, "exit_code", 130) == 130
    epoch = t.epoch
    if t.world.active and not by_user and _peer_died(t.world):
        (rank, pid), last = t.world.dead()[0], _last(t.checkpoint) or "none yet (first epoch)"
        return DnnlabError(f"rank {rank} (pid {pid}) died at epoch {epoch}, step {state.step}; "
                           f"the run stopped; its last checkpoint is intact: {last}")
    if isinstance(err, RuntimeError):
        return err
    return Interrupted(epoch, state.step, _last(t.checkpoint), getattr(err, "exit_code", 130))


def fit(model: torch.nn.Module, data: Batches, optimizer: torch.optim.Optimizer,
        scheduler: Any, settings: TrainerSettings, callbacks: Sequence[Callback] = (),
        checkpoint: Checkpoint | None = None, world: World | None = None) -> TrainResult:
    """Train `model` on its device from `checkpoint.start` if set, saving the checkpoint each
    epoch (rank 0 only). A non-finite loss is a DnnlabError naming the step; Ctrl-C raises
    `Interrupted`. Under several processes (`world`) the model trains wrapped in DDP, every
    rank on its share of each global batch; the records are the reduced ones on every rank."""
    t = Trainer.build(model, data, optimizer, scheduler, settings, callbacks, checkpoint,
                      world or World())
    state = start(t)
    t.epoch = state.next_epoch
    first, learnable = state.next_epoch, any(getattr(m, "learnable", False)
                                             for m in model.modules())
    done = stopped(state.history, settings.early_stopping)
    stopped_epoch, pool = state.history[-1]["epoch"] if done else None, {}
    try:
        while not done and state.next_epoch < settings.epochs:
            pool = run_epoch(t, state)
            save(t, state)
            end = EpochEnd(state.history[-1], pool, state.step, state.history,
                           state.resumed if state.epoch == first else None, learnable)
            for cb in t.callbacks:
                cb.on_epoch(end)
            done = stopped(state.history, settings.early_stopping)
            stopped_epoch = state.epoch if done else None
    except Interrupted:
        raise
    except (KeyboardInterrupt, RuntimeError) as err:  # Ctrl-C, SIGTERM, a process group lost
        try:  # the steps done still reach the callbacks
            read_losses(t, check=False)
        except BaseException:  # noqa: BLE001 - a callback's error, a second Ctrl-C: the stop wins
            pass
        stop = _stop(err, t, state)
        if stop is err:
            raise
        raise stop from None
    if not pool:  # nothing left to train (resumed at its last epoch): measure the model as it is
        pool = pooling_stats(model, t.probe_x)
    return _result(t, state, pool, stopped_epoch)


def _result(t: Trainer, state: TrainState, pool: dict, stopped_epoch: int | None
            ) -> TrainResult:
    test = evaluate(t.model, t.test_loader, t.device, t.world)
    history, best = state.history, best_of(state.history)
    return TrainResult(
        test_accuracy=test["accuracy"], test_loss=test["loss"],
        val_accuracy=history[-1]["val_accuracy"] if history else None,
        best_val_accuracy=best["val_accuracy"] if best else None,
        best_epoch=best["epoch"] if best else None,
        grad_entropy=pool.get("pool/entropy_rel"), argmax_mass=pool.get("pool/argmax_mass"),
        probe_max_abs_err=state.worst["max_abs_err"],
        probe_max_rel_err=state.worst["max_rel_err"], epochs=t.settings.epochs,
        steps=state.step, history=history, betas=pool_betas(pool),
        compile_seconds=t.compile_seconds, stopped_epoch=stopped_epoch)


def pool_betas(pool: dict) -> dict[str, float]:
    """{layer: beta} from the pooling statistics (the learned values for a learnable beta)."""
    return {k[len("pool/"):-len("/beta")]: v for k, v in pool.items()
            if k.startswith("pool/") and k.endswith("/beta")}
