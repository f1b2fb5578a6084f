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
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dnnlab.core.distributed import World
from dnnlab.core.errors import ConfigError, DnnlabError
from dnnlab.core.torch_private import graphs_compiled
from dnnlab.train.data import Batches
from dnnlab.train.probes import Capture, compare, pooling_stats
from dnnlab.train.records import Callback, EpochEnd, Interrupted, TrainResult, best_of
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import EarlyStopping, TrainerSettings
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


def _restore(ck: dict, model, optimizer, scheduler) -> None:
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck.get("scheduler") is not None:
        scheduler.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"]["torch"])
    py = ck["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _last(checkpoint: Checkpoint | None) -> Any:
    return checkpoint.path if checkpoint is not None and checkpoint.path.exists() else None


def fit(model: torch.nn.Module, data: Batches, optimizer: torch.optim.Optimizer,
        scheduler: Any, settings: TrainerSettings, callbacks: Sequence[Callback] = (),
        checkpoint: Checkpoint | None = None, world: World | None = None) -> TrainResult:
    """Train `model` (on its device) from `checkpoint.start` if set, saving the checkpoint each
    epoch (rank 0 only). A non-finite loss is a DnnlabError naming the step; Ctrl-C raises
    `Interrupted`. Under several processes (`world`) the model trains wrapped in DDP, every
    rank on its share of each global batch; the records are the reduced ones on every rank."""
    world = world or World()
    device = world.device(resolve_device(settings.device))
    val_set, test_set, train_batches = data.splits.val, data.splits.test, data.train
    if settings.overfit_batches:  # the same first batches every epoch, as val and test too
        fixed = list(itertools.islice(DataLoader(data.splits.train, batch_size=data.batch_size),
                                      settings.overfit_batches))
        train_batches = lambda epoch: fixed  # noqa: E731
        val_loader = test_loader = fixed
    else:
        val_loader = list(_limit(DataLoader(val_set, batch_size=256), settings.limit_batches))
        test_loader = _limit(DataLoader(test_set, batch_size=256), settings.limit_batches)
    probe_x = next(iter(DataLoader(data.splits.val, batch_size=64)))[0].to(device)  # (64,C,H,W)
    start, history, step, resumed, partial = 0, [], 0, None, None
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    ck = checkpoint.start if checkpoint is not None else None
    if ck is not None:
        _restore(ck, model, optimizer, scheduler)
        resumed, history, step = int(ck["epoch"]), list(ck["history"]), int(ck["step"])
        worst.update(ck.get("probe_worst") or {})
        start, partial = resumed + 1, ck.get("partial")  # partial: within epoch `start`

    def save(epoch_done: int, partial: dict | None = None) -> None:
        """The checkpoint after epoch `epoch_done`, or within the next epoch (`partial`: its
        steps done and running sums, trainer.checkpoint_every). No per-rank state: a resume
        may use another number of processes."""
        if checkpoint is not None and world.is_main:
            checkpoint.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
                "epoch": epoch_done, "step": step, "history": history,
                "probe_worst": dict(worst), "partial": partial})

    k, every = settings.probe_every if world.is_main else 0, settings.log_every
    learnable = any(getattr(m, "learnable", False) for m in model.modules())
    model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None) if world.active else None
    # training steps run the compiled (or DDP) module; evaluation and the pooling statistics
    # run `model` itself (the same parameters); a probe's hooks sit on `model`'s layers
    if settings.compile:
        torch.compiler.reset()  # a reused worker process must not carry a job's graphs over
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA"
    trained = ddp if ddp is not None else model
    forward = torch.compile(trained) if settings.compile else trained
    stepper = Stepper(optimizer, settings, world, device, model.parameters(), ddp)
    compile_seconds, pool, epoch, cap = None, {}, start, None
    stopped_epoch = history[-1]["epoch"] if stopped(history, settings.early_stopping) else None
    try:
        for epoch in range(start, settings.epochs if stopped_epoch is None else start):
            model.train()
            t0, seen, run_loss, run_correct = time.perf_counter(), 0, 0.0, 0
            skip = 0
            if partial is not None and epoch == start:  # resumed inside this epoch
                skip, seen = int(partial["steps"]), int(partial["seen"])
                run_loss, run_correct = float(partial["loss"]), int(partial["correct"])
                t0 -= float(partial["seconds"])
            batches = _limit(train_batches(epoch), settings.limit_batches)
            for i, group in enumerate(groups(batches, settings.accumulate)):
                if i < skip:  # the same shuffle: these steps were trained before
                    continue
                step += 1
                cap = Capture(model) if k > 0 and step % k == 0 else None
                graphs = graphs_compiled() if settings.compile and cap is None else None
                t_step = time.perf_counter()
                sums = stepper.step(group, trained if cap is not None else forward)
                loss = sums["loss"] / sums["n"]  # the mean over the global batch
                if not math.isfinite(loss):
                    last = _last(checkpoint) or "none (first epoch)"
                    raise DnnlabError(f"loss is {loss} at epoch {epoch} step {step} "
                                      f"(optimizer.lr={optimizer.param_groups[0]['lr']:g}); "
                                      f"stopped. Last good checkpoint: {last}")
                if graphs is not None and graphs_compiled() != graphs:  # this step compiled
                    compile_seconds = (compile_seconds or 0.0) + time.perf_counter() - t_step
                seen += sums["n"]
                run_loss += sums["loss"]
                run_correct += sums["correct"]
                if every > 0 and step % every == 0:
                    for cb in callbacks:
                        cb.on_step(step, loss, optimizer.param_groups[0]["lr"])
                if cap is not None:
                    cap.close()
                    rows = compare(cap)
                    worst = {key: max([v] + [r[key] for r in rows]) for key, v in worst.items()}
                    for cb in callbacks:
                        cb.on_probe(step, rows)
                if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                    save(epoch - 1, {"steps": i + 1, "seen": seen, "loss": run_loss,
                                     "correct": run_correct,
                                     "seconds": time.perf_counter() - t0})
            dt = time.perf_counter() - t0
            if scheduler is not None:
                scheduler.step()
            val = evaluate(model, val_loader, device, world)
            pool = pooling_stats(model, probe_x)
            rec = {"epoch": epoch, "step": step, "train_loss": run_loss / max(seen, 1),
                   "train_accuracy": run_correct / max(seen, 1), "val_loss": val["loss"],
                   "val_accuracy": val["accuracy"], "lr": optimizer.param_groups[0]["lr"],
                   "images_per_s": seen / dt}
            rec.update({key: v for key, v in pool.items() if key.count("/") == 1})
            history.append(rec)
            save(epoch)
            end = EpochEnd(rec, pool, step, history, resumed if epoch == start else None,
                           learnable)
            for cb in callbacks:
                cb.on_epoch(end)
            if stopped(history, settings.early_stopping):
                stopped_epoch = epoch
                break
    except Interrupted:
        raise
    except (KeyboardInterrupt, RuntimeError) as err:  # Ctrl-C, SIGTERM, a process group lost
        # a launcher stops the survivors of a dead rank with SIGTERM; SIGINT is a user's Ctrl-C
        # (sent to every rank: a peer gone then is no crash)
        by_user = isinstance(err, KeyboardInterrupt) and getattr(err, "exit_code", 130) == 130
        if world.active and not by_user and _peer_died(world):
            (rank, pid), last = world.dead()[0], _last(checkpoint) or "none yet (first epoch)"
            raise DnnlabError(f"rank {rank} (pid {pid}) died at epoch {epoch}, step {step}; "
                              f"the run stopped; its last checkpoint is intact: {last}") from None
        if isinstance(err, RuntimeError):
            raise
        raise Interrupted(epoch, step, _last(checkpoint), getattr(err, "exit_code", 130)) from None
    finally:
        if cap is not None:  # a probe's hooks, when a step stopped half-way
            cap.close()
    if not pool:  # nothing left to train (resumed at its last epoch): measure the model as it is
        pool = pooling_stats(model, probe_x)
    test = evaluate(model, test_loader, device, world)
    best = best_of(history)
    return TrainResult(
        test_accuracy=test["accuracy"], test_loss=test["loss"],
        val_accuracy=history[-1]["val_accuracy"] if history else None,
        best_val_accuracy=best["val_accuracy"] if best else None,
        best_epoch=best["epoch"] if best else None,
        grad_entropy=pool.get("pool/entropy_rel"), argmax_mass=pool.get("pool/argmax_mass"),
        probe_max_abs_err=worst["max_abs_err"], probe_max_rel_err=worst["max_rel_err"],
        epochs=settings.epochs, steps=step, history=history, betas=pool_betas(pool),
        compile_seconds=compile_seconds, stopped_epoch=stopped_epoch)


def pool_betas(pool: dict) -> dict[str, float]:
    """{layer: beta} from the pooling statistics (the learned values for a learnable beta)."""
    return {k[len("pool/"):-len("/beta")]: v for k, v in pool.items()
            if k.startswith("pool/") and k.endswith("/beta")}
