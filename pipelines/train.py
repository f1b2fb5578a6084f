"""Train a network of dnnlab layers and watch docs/math.md (1c) and (3b) at work (docs/train.md).
`prepare` builds all that can refuse the config (data, model, shapes, a resume) before anything
is written; `job` trains and owns results.json (its history written as it goes, KeepHistory).
`main` returns the best validation accuracy, what a sweeper optimizes (never a test metric)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnnlab.core.outputs import Outputs, Prepared
from dnnlab.run.cli import console, launch
from dnnlab.run.config import register
from dnnlab.run.models import build_training
from dnnlab.run.processes import spawned
from dnnlab.run.resume import resumable, resume_or_start, resumed_at
from dnnlab.run.runtime import Context, Run, run_job
from dnnlab.run.trial import pruned, trial_callbacks
from dnnlab.train import loop
from dnnlab.train.logs import TrainLogs, wandb_config
from dnnlab.train.probes import pool_beta
from dnnlab.train.progress import EpochBar, result_lines
from dnnlab.train.records import KeepHistory
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import TrainSettings
from dnnlab.train.trial import Pruned

register("train", TrainSettings)


def prepare(s: TrainSettings, context: Context) -> Prepared:
    built = build_training(s)  # seeded, then data, model, optimizer, scheduler
    built.checkpoint = Checkpoint(context.run_dir / "checkpoint.pt", context.config)
    resume = resume_or_start(built.checkpoint, s.trainer.resume, context.config_with,
                             s.trainer.epochs)  # or NothingToDo: done with this config
    return Prepared(s, built, resume)


def job(p: Prepared, run: Run) -> Outputs:
    s, b, main = p.settings, p.built, run.world.is_main  # rank 0 alone writes and shows
    step, beta = resumed_at(b.checkpoint, run), pool_beta(b.model)
    run.results.update(model=str(s.model.get("name")), data=s.data.name, beta=beta, seed=s.seed)
    logs = TrainLogs(run.tracker, b.model, beta, resumed_at=step)
    run.tracker.watch(b.model, s.wandb.watch.log, s.wandb.watch.log_freq)
    history = KeepHistory(lambda h: run.results.update(history=h))  # results' one writer
    try:
        with resumable("pipelines.train", run), EpochBar(s.trainer.epochs, console,
                                                         s.trainer.progress and main) as bar:
            result = loop.fit(b.model, b.batches, b.optimizer, b.scheduler, s.trainer,
                              ([logs, history, bar] if main else []) + trial_callbacks(run),
                              b.checkpoint, run.world)
    except Pruned as pr:  # the search's pruner stopped it after an epoch: not an error
        return pruned(run, pr)
    if main:
        logs.finish(result, b.checkpoint.config, b.checkpoint.path)
    *lines, last = result_lines(result)
    return Outputs(result.to_dict(), show=lines, footer=run.label + last + "; results: {path}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    results = spawned(cfg, "pipelines.train")  # trainer.processes=N: N processes, one run
    if results is None:
        results = run_job(cfg, "train", job, prepare=prepare, wandb_config=wandb_config,
                          distributed=True)
    return results.get("best_val_accuracy")


if __name__ == "__main__":
    launch("pipelines.train")
