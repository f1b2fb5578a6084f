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

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dnnlab.errors import ConfigError, DnnlabError
from dnnlab.torch_private import graphs_compiled
from dnnlab.train.data import Batches
from dnnlab.train.probes import Capture, compare, pooling_stats
from dnnlab.train.records import Callback, EpochEnd, Interrupted, TrainResult, best_of
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import TrainerSettings


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
        checkpoint: Checkpoint | None = None) -> TrainResult:
    """Train `model` (on its device) from `checkpoint.start` if set, saving the checkpoint each
    epoch. A non-finite loss is a DnnlabError naming the step; Ctrl-C raises `Interrupted`."""
    device = resolve_device(settings.device)
    val_loader = DataLoader(data.splits.val, batch_size=256)
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
        batches done and running sums, trainer.checkpoint_every)."""
        if checkpoint is not None:
            checkpoint.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
                "epoch": epoch_done, "step": step, "history": history,
                "probe_worst": dict(worst), "partial": partial})

    k, every = settings.probe_every, settings.log_every
    learnable = any(getattr(m, "learnable", False) for m in model.modules())
    # training steps run the compiled module; probes, evaluation and pooling statistics run
    # `model` itself (the same parameters), so hooks never force a recompile
    if settings.compile:
        torch.compiler.reset()  # a reused worker process must not carry a job's graphs over
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA"
    forward = torch.compile(model) if settings.compile else model
    compile_seconds, pool, epoch, cap = None, {}, start, None
    try:
        for epoch in range(start, settings.epochs):
            model.train()
            t0, seen, run_loss, run_correct = time.perf_counter(), 0, 0.0, 0
            skip = 0
            if partial is not None and epoch == start:  # resumed inside this epoch
                skip, seen = int(partial["batches"]), int(partial["seen"])
                run_loss, run_correct = float(partial["loss"]), int(partial["correct"])
                t0 -= float(partial["seconds"])
            for batch, (x, y) in enumerate(data.train(epoch)):
                if batch < skip:  # the same shuffle: these batches were trained before
                    continue
                x, y = x.to(device), y.to(device)  # (B, C, H, W), (B,)
                step += 1
                cap = Capture(model) if k > 0 and step % k == 0 else None
                graphs = graphs_compiled() if settings.compile and cap is None else None
                t_step = time.perf_counter()
                out = (model if cap is not None else forward)(x)  # (B, num_classes)
                loss = F.cross_entropy(out, y)
                if not torch.isfinite(loss):
                    last = _last(checkpoint) or "none (first epoch)"
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
                    worst = {key: max([v] + [r[key] for r in rows]) for key, v in worst.items()}
                    for cb in callbacks:
                        cb.on_probe(step, rows)
                if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                    save(epoch - 1, {"batches": batch + 1, "seen": seen, "loss": run_loss,
                                     "correct": run_correct,
                                     "seconds": time.perf_counter() - t0})
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
            save(epoch)
            end = EpochEnd(rec, pool, step, history, resumed if epoch == start else None,
                           learnable)
            for cb in callbacks:
                cb.on_epoch(end)
    except Interrupted:
        raise
    except KeyboardInterrupt as err:
        raise Interrupted(epoch, step, _last(checkpoint), getattr(err, "exit_code", 130)) from None
    finally:
        if cap is not None:  # a probe's hooks, when a step stopped half-way
            cap.close()
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
