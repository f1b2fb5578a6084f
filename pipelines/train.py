"""Train a network of dnnlab layers and watch docs/math.md (1c) and (4b) at work (docs/train.md).
`prepare` builds all that can refuse the config (data, model, shapes, a resume) before anything
is written; `job` trains and owns results.json; the checkpoint holds the history. `main` returns
the best validation accuracy, what a sweeper optimizes (never a test metric)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dnnlab import distributed, hydra_job
from dnnlab.cli import console, launch
from dnnlab.config import register, resolved_with
from dnnlab.models import build_model, instantiate_spec
from dnnlab.results import Results
from dnnlab.runtime import Run, run_job
from dnnlab.train import loop
from dnnlab.train.data import Batches, check_fits
from dnnlab.train.logs import TrainLogs, wandb_config
from dnnlab.train.probes import pool_beta
from dnnlab.train.progress import EpochBar, print_result
from dnnlab.train.records import OnEpoch, best_of
from dnnlab.train.resume import (
    Checkpoint,
    interrupted_line,
    replay,
    resume_command,
    resume_or_start,
)
from dnnlab.train.settings import TrainSettings
from dnnlab.train.trial import Pruned, ReportToTrial
from dnnlab.trial import TRIAL, TrialLink

register("train")


@dataclass
class Ready:  # what `prepare` accepted: the objects `fit` takes, and whether this run resumes
    settings: TrainSettings
    model: torch.nn.Module
    batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    checkpoint: Checkpoint  # with the resolved config that made it
    resume: bool


def prepare(s: TrainSettings, cfg: DictConfig, run_dir) -> Ready:
    loop.seed_everything(s.seed, s.trainer.threads)  # before anything draws a random number
    splits = instantiate_spec(s.data.dataset, "data.dataset", root=s.paths.data_dir)
    model = build_model(s.model["builder"], device="cpu")
    check_fits(model, splits, s.model.get("name"), s.data.name, s.data.num_classes)
    model.to(loop.resolve_device(s.trainer.device))
    opt = instantiate_spec(s.optimizer, "optimizer", params=model.parameters())
    sched = instantiate_spec(s.scheduler, "scheduler", optimizer=opt) if s.scheduler else None
    ck = Checkpoint(run_dir / "checkpoint.pt",
                    OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    resume = resume_or_start(ck, s.trainer.resume, lambda pinned: resolved_with(cfg, pinned),
                             s.trainer.epochs)  # or NothingToDo: done with this config
    return Ready(s, model, Batches(splits, s.data.batch_size, s.seed), opt, sched, ck, resume)


def job(r: Ready, run: Run) -> dict:
    s, ck, main = r.settings, r.checkpoint, run.world.is_main  # rank 0 alone writes and shows
    if ck.warning and main:
        console.print(f"warning: {ck.warning}", highlight=False, soft_wrap=True)
    step = int(ck.start["step"]) if ck.start is not None else None
    if step is not None and main:
        replay(run.tracker, step)
    beta = pool_beta(r.model)
    run.results.update(model=str(s.model.get("name")), data=s.data.name, beta=beta, seed=s.seed,
                       history=ck.start["history"] if ck.start else [])
    logs = TrainLogs(run.tracker, r.model, beta, resumed_at=step)
    run.tracker.watch(r.model, s.wandb.watch.log, s.wandb.watch.log_freq)
    history = OnEpoch(lambda end: run.results.update(history=end.history))  # as it goes
    try:
        with EpochBar(s.trainer.epochs, console, s.trainer.progress and main) as bar:
            result = loop.fit(r.model, r.batches, r.optimizer, r.scheduler, s.trainer,
                              ([logs, history, bar] if main else []) + trial_callbacks(run),
                              ck, run.world)
    except loop.Interrupted as err:
        err.line = interrupted_line(err, resume_command("pipelines.train", run.overrides, run.dir))
        raise
    except Pruned as p:  # the search's pruner stopped it after an epoch: not an error
        return pruned(run, p)
    run.results.update(**result.to_dict())
    if main:
        logs.finish(result, ck.config, ck.path)
        print_result(console, result, run.results.path, run.label)
    return run.results


def trial_callbacks(run: Run) -> list:
    """experiment=search (dnnlab.trial): rank 0 reports each epoch's val accuracy to the job's
    Optuna trial, and every rank stops when the pruner says so. Last in the list: the epoch's
    records are written before."""
    if not os.environ.get(TRIAL):
        return []
    link = TrialLink.from_env() if run.world.is_main else None
    return [ReportToTrial(lambda epoch, value: bool(run.world.broadcast(
        link is not None and link.report(epoch, value))))]


def pruned(run: Run, p: Pruned) -> dict:
    """results.json and the W&B run of a trial the search pruned: `status: pruned`, the epoch,
    the history so far and its best validation accuracy (what the sweeper reads back)."""
    best = best_of(run.results.get("history") or [])
    run.results.update(status="pruned", pruned_epoch=p.epoch,
                       best_val_accuracy=best["val_accuracy"] if best else None,
                       best_epoch=best["epoch"] if best else None)
    run.tracker.summary(status="pruned", pruned_epoch=p.epoch,
                        best_val_accuracy=run.results["best_val_accuracy"])
    run.tracker.add_tags("pruned")
    if run.world.is_main:
        console.print(f"{p}: {run.dir}", highlight=False, soft_wrap=True)
    return run.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    n = cfg.trainer.processes
    if isinstance(n, int) and n > 1 and not distributed.launched():  # N processes, one run
        hj = hydra_job.current()
        code = distributed.start(n, "pipelines.train", hj.overrides, hj.run_dir)
        if code:
            sys.exit(code)  # the failed rank printed its line
        return Results.read(hj.run_dir).get("best_val_accuracy")
    return run_job(cfg, "train", job, prepare=prepare, wandb_config=wandb_config,
                   distributed=True).get("best_val_accuracy")


if __name__ == "__main__":
    launch("pipelines.train")
