"""Train a network of dnnlab layers and watch docs/math.md (1c) and (4b) at work (docs/train.md).
`prepare` builds all that can refuse the config (data, model, shapes, a resume) before anything
is written; `job` trains and owns results.json; the checkpoint holds the history. `main` returns
the best validation accuracy, what a sweeper optimizes (never a test metric)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dnnlab.cli import console, launch
from dnnlab.config import register, resolved_with
from dnnlab.models import build_model, instantiate_spec
from dnnlab.results import read_json
from dnnlab.runtime import NothingToDo, Run, run_job
from dnnlab.train import loop
from dnnlab.train.data import Batches, check_fits
from dnnlab.train.logs import TrainLogs
from dnnlab.train.probes import pool_beta
from dnnlab.train.resume import Checkpoint, replay, resume_command
from dnnlab.train.settings import TrainSettings

register("train")


@dataclass
class Ready:  # what `prepare` accepted: the objects `fit` takes, and whether this run resumes
    settings: TrainSettings
    model: torch.nn.Module
    batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: Any
    checkpoint: Checkpoint
    config: dict
    resume: bool


def prepare(s: TrainSettings, cfg: DictConfig, run_dir) -> Ready:
    loop.seed_everything(s.seed, s.trainer.threads)  # before anything draws a random number
    splits = instantiate_spec(s.data.dataset, "data.dataset", root=s.paths.data_dir)
    model = build_model(s.model["builder"], device="cpu")
    check_fits(model, splits, s.model.get("name"), s.data.name, s.data.num_classes)
    model.to(loop.resolve_device(s.trainer.device))
    opt = instantiate_spec(s.optimizer, "optimizer", params=model.parameters())
    sched = instantiate_spec(s.scheduler, "scheduler", optimizer=opt) if s.scheduler else None
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    ck = Checkpoint(run_dir / "checkpoint.pt", config)
    if s.trainer.resume:
        done = int(ck.resume(lambda pinned: resolved_with(cfg, pinned))["epoch"]) + 1
        old = read_json(run_dir / "results.json") or {}
        if done >= s.trainer.epochs and "test_accuracy" in old:
            raise NothingToDo(f"nothing to do: {run_dir} already finished {done} epochs "
                              f"(trainer.epochs={s.trainer.epochs}); nothing changed. Raise "
                              "trainer.epochs to train longer", old)
    return Ready(s, model, Batches(splits, s.data.batch_size, s.seed), opt, sched, ck,
                 config, s.trainer.resume)


class EpochBar(loop.Callback):  # the progress bar; the history into results.json every epoch
    def __init__(self, run: Run, epochs: int, show: bool):
        self.results, self.bar = run.results, Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} {task.fields[metrics]}"),
            TimeElapsedColumn(), console=console, disable=not show)
        self.task = self.bar.add_task("train", total=epochs, epoch=0, metrics="")

    def on_epoch(self, end: loop.EpochEnd) -> None:
        self.results.update(history=end.history)
        r, h = end.record, end.pool.get("pool/entropy_rel", float("nan"))
        self.bar.update(self.task, completed=r["epoch"] + 1, epoch=r["epoch"] + 1, metrics=(
            f"loss {r['train_loss']:.3f} val_acc {r['val_accuracy']:.3f} H/Hmax {h:.2f}"))


def job(r: Ready, run: Run) -> dict:
    s, ck = r.settings, r.checkpoint
    if ck.warning:
        console.print(f"warning: {ck.warning}", highlight=False, soft_wrap=True)
    step = int(ck.start["step"]) if ck.start is not None else None
    if step is not None:
        replay(run.tracker, step)
    run.results.update(model=str(s.model.get("name")), data=s.data.name,
                       beta=pool_beta(r.model), history=ck.start["history"] if ck.start else [])
    logs = TrainLogs(run.tracker, r.model, pool_beta(r.model), resumed_at=step)
    run.tracker.watch(r.model, s.wandb.watch.log, s.wandb.watch.log_freq)
    bar = EpochBar(run, s.trainer.epochs, s.trainer.progress)
    try:
        with bar.bar:
            result = loop.fit(r.model, r.batches, r.optimizer, r.scheduler, s.trainer,
                              callbacks=[logs, bar], checkpoint=ck)
    except loop.Interrupted as err:
        err.line = (f"interrupted at epoch {err.epoch}, step {err.step}; checkpoint "
                    f"{err.checkpoint or 'none yet (first epoch)'}; resume with: "
                    f"{resume_command('pipelines.train', run.overrides, run.dir)}")
        raise
    run.results.update(**result.to_dict())
    logs.finish(result, r.config, ck.path)
    if result.compile_seconds is not None:
        console.print(f"torch.compile: {result.compile_seconds:.1f} s in the steps that compiled")
    console.print(f"best val accuracy {result.best_val_accuracy:.4f} (epoch {result.best_epoch})"
                  f"; test accuracy {result.test_accuracy:.4f}; results: {run.results.path}")
    return run.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg, "train", job, prepare=prepare).get("best_val_accuracy")


if __name__ == "__main__":
    launch("pipelines.train")
