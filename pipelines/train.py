"""Train a network of dnnlab layers and watch docs/math.md (1c) and (4b) at work (docs/train.md).
`prepare` builds all that can refuse the config (data, model, shapes, a resume) before anything
is written; `job` trains and owns results.json; the checkpoint holds the history. `main` returns
the best validation accuracy, what a sweeper optimizes (never a test metric)."""
from __future__ import annotations

from dataclasses import dataclass

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dnnlab.run.cli import console, launch
from dnnlab.run.config import register, resolved_with
from dnnlab.run.models import build_model, instantiate_spec
from dnnlab.run.resume import interrupted_line, replay, resume_command, resume_or_start
from dnnlab.run.runtime import Run, run_job
from dnnlab.train import loop
from dnnlab.train.data import Batches, check_fits
from dnnlab.train.logs import TrainLogs, wandb_config
from dnnlab.train.probes import pool_beta
from dnnlab.train.progress import EpochBar, print_result
from dnnlab.train.records import OnEpoch
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import TrainSettings

register("train", TrainSettings)


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
                              [logs, history, bar] if main else [], ck, run.world)
    except loop.Interrupted as err:
        err.line = interrupted_line(err, resume_command("pipelines.train", run.overrides, run.dir))
        raise
    run.results.update(**result.to_dict())
    if main:
        logs.finish(result, ck.config, ck.path)
        print_result(console, result, run.results.path)
    return run.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg, "train", job, prepare=prepare, wandb_config=wandb_config,
                   distributed=True).get("best_val_accuracy")


if __name__ == "__main__":
    launch("pipelines.train")
