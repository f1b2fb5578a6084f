"""The training loop of pipelines/train.py: deterministic, checkpointed every epoch, resumable.

Logged (W&B and metrics.jsonl): train loss/accuracy per step window and epoch, val per epoch,
test at the end, learning rate, throughput (images/s); every `trainer.grad_check_every` steps
the hand-written gradients of each dnnlab layer against autograd (`dnnlab.gradcheck`), and the
pooling's gradient statistics: entropy of softmax(beta x), mass on the argmax, beta.
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader

from dnnlab.data import make_data
from dnnlab.errors import ConfigError, DnnlabError, ShapeError
from dnnlab.gradcheck import Capture, compare, pool_stats
from dnnlab.models import build_model
from dnnlab.nn import SmoothMaxPool2d
from dnnlab.tracking import Tracker

CKPT = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device: unknown device '{name}'") from None


def _check_fits(cfg: DictConfig, model: torch.nn.Module, shape: list) -> None:
    """A network that cannot take the data's images: one line naming the layer (on meta)."""
    from dnnlab.opcount import count_ops

    try:
        count_ops(model, shape)
    except ShapeError as err:
        raise ShapeError(f"model={cfg.model.get('name')} cannot take data={cfg.data.name} images "
                         f"{shape[1:]}: {err}") from None


@torch.no_grad()
def evaluate(model, loader, device) -> dict:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}


def _pools(model) -> list:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SmoothMaxPool2d)]


@torch.no_grad()
def pooling_stats(model, x) -> dict:
    """Gradient statistics of every SmoothMaxPool2d on a batch (seed 1c: softmax(beta x))."""
    cap = Capture(model, types=(SmoothMaxPool2d,))
    try:
        model.eval()
        model(x)
    finally:
        cap.close()
    out = {}
    for name, e in cap.items.items():
        s = pool_stats(e["module"], e["x"])
        b = e["module"].beta
        out[f"pool/{name}/entropy"] = s["entropy"]
        out[f"pool/{name}/entropy_rel"] = s["entropy"] / s["entropy_max"]
        out[f"pool/{name}/argmax_mass"] = s["argmax_mass"]
        out[f"pool/{name}/beta"] = float(b.mean()) if isinstance(b, torch.Tensor) else float(b)
    if cap.items:
        ents = [v for k, v in out.items() if k.endswith("/entropy_rel")]
        out["pool/entropy_rel"] = sum(ents) / len(ents)
        masses = [v for k, v in out.items() if k.endswith("/argmax_mass")]
        out["pool/argmax_mass"] = sum(masses) / len(masses)
    return out


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill -9 never leaves half a checkpoint


def train(cfg: DictConfig, tracker: Tracker) -> dict:
    tc = cfg.trainer
    seed = int(cfg.seed)
    seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = _device(str(tc.device))
    data = make_data(cfg.data, str(cfg.paths.data_dir))
    model = build_model(cfg.model, device="cpu")
    _check_fits(cfg, model, [1, data.channels, data.image_size, data.image_size])
    model.to(device)
    try:
        opt = instantiate(cfg.optimizer)(params=model.parameters())
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"optimizer ({cfg.optimizer.get('_target_')}): "
                          f"{str(err).splitlines()[-1]}") from None
    sched = instantiate(cfg.scheduler)(optimizer=opt) if cfg.get("scheduler") else None
    bs = int(cfg.data.batch_size)
    if bs < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {bs}")
    val_loader = DataLoader(data.val, batch_size=256)
    test_loader = DataLoader(data.test, batch_size=256)
    probe = next(iter(DataLoader(data.val, batch_size=64)))[0].to(device)

    ckpt_path = tracker.run_dir / CKPT
    start, history, step = 0, [], 0
    if tc.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler") is not None:
            sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        random.setstate((ck["rng"]["python"][0], tuple(ck["rng"]["python"][1]),
                         ck["rng"]["python"][2]))
        start, history, step = int(ck["epoch"]) + 1, list(ck["history"]), int(ck["step"])
        tracker.log({"resumed_from_epoch": start - 1}, step=step)
    elif tc.resume:
        raise ConfigError(f"trainer.resume=true: no checkpoint at {ckpt_path} "
                          "(pass the run's hydra.run.dir)")
    tracker.results.update(model=str(cfg.model.get("name")), data=str(cfg.data.name),
                           beta=_beta_value(cfg), history=history)
    epochs, k_check = int(tc.epochs), int(tc.grad_check_every)
    grad_max = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    last_stats: dict = {}
    with Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} {task.fields[metrics]}"),
                  TimeElapsedColumn(), transient=False, disable=not tc.progress) as progress:
        task = progress.add_task("train", total=epochs, epoch=start, metrics="", completed=start)
        for epoch in range(start, epochs):
            gen = torch.Generator().manual_seed(seed * 100003 + epoch)  # same order after resume
            loader = DataLoader(data.train, batch_size=bs, shuffle=True, generator=gen)
            model.train()
            t0, seen, run_loss, run_correct = time.perf_counter(), 0, 0.0, 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                step += 1
                check = k_check > 0 and step % k_check == 0
                cap = Capture(model) if check else None
                out = model(x)
                loss = F.cross_entropy(out, y)
                if not torch.isfinite(loss):
                    if cap:
                        cap.close()
                    last = ckpt_path if ckpt_path.exists() else "none (first epoch)"
                    raise DnnlabError(f"loss is {loss.item()} at epoch {epoch} step {step} "
                                      f"(optimizer.lr={opt.param_groups[0]['lr']:g}); stopped. "
                                      f"Last good checkpoint: {last}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(y)
                run_loss += loss.item() * len(y)
                run_correct += (out.argmax(1) == y).sum().item()
                if cap is not None:
                    cap.close()
                    rows = compare(cap)
                    metrics = {}
                    for r in rows:
                        metrics[f"gradcheck/{r['layer']}/{r['param']}/max_abs_err"] = r["max_abs_err"]
                        metrics[f"gradcheck/{r['layer']}/{r['param']}/max_rel_err"] = r["max_rel_err"]
                        grad_max["max_abs_err"] = max(grad_max["max_abs_err"], r["max_abs_err"])
                        grad_max["max_rel_err"] = max(grad_max["max_rel_err"], r["max_rel_err"])
                    tracker.log(metrics, step=step)
            dt = time.perf_counter() - t0
            if sched is not None:
                sched.step()
            val = evaluate(model, val_loader, device)
            last_stats = pooling_stats(model, probe)
            rec = {"epoch": epoch, "step": step, "train_loss": run_loss / seen,
                   "train_accuracy": run_correct / seen, "val_loss": val["loss"],
                   "val_accuracy": val["accuracy"], "lr": opt.param_groups[0]["lr"],
                   "images_per_s": seen / dt}
            rec.update({k: v for k, v in last_stats.items() if k.count("/") == 1})
            history.append(rec)
            tracker.log({f"epoch/{k}" if k != "epoch" else k: v for k, v in rec.items()
                         if not isinstance(v, str)} | last_stats, step=step)
            _save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
                "epoch": epoch, "step": step, "history": history})
            tracker.results["history"] = history
            tracker.save()
            progress.update(task, advance=1, epoch=epoch + 1, metrics=(
                f"loss {rec['train_loss']:.3f} val_acc {rec['val_accuracy']:.3f} "
                f"H/Hmax {last_stats.get('pool/entropy_rel', float('nan')):.2f}"))
    test = evaluate(model, test_loader, device)
    final = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
             "val_accuracy": history[-1]["val_accuracy"] if history else None,
             "grad_entropy": last_stats.get("pool/entropy_rel"),
             "argmax_mass": last_stats.get("pool/argmax_mass"),
             "gradcheck_max_abs_err": grad_max["max_abs_err"],
             "gradcheck_max_rel_err": grad_max["max_rel_err"], "epochs": epochs, "steps": step}
    tracker.log({"test/accuracy": test["accuracy"], "test/loss": test["loss"]}, step=step)
    tracker.summary(**final)
    return tracker.results


def _beta_value(cfg: DictConfig):
    pool = cfg.model.get("pool", None)
    if pool is None:
        return None
    b = pool.get("beta", None)
    try:
        b = float(b)
    except (TypeError, ValueError):
        return str(b)
    return "learnable" if pool.get("learnable", False) else (b if math.isfinite(b) else "inf")
