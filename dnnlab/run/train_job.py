"""The training pipeline's job (pipelines/train.py): `prepare` builds all that can refuse the
config (data, model, shapes, a resume) before anything is written; `job` trains, with
results.json's history written as it goes (KeepHistory), W&B's logs, the progress bar and,
under a search, the trial's pruning, and returns the run's Outputs."""
from __future__ import annotations

from dnnlab.core.outputs import Outputs, Prepared
from dnnlab.run.cli import console
from dnnlab.run.models import build_training
from dnnlab.run.resume import resumable, resume_or_start, resumed_at
from dnnlab.run.runtime import Context, Run
from dnnlab.run.trial import pruned, trial_callbacks
from dnnlab.train import loop
from dnnlab.train.logs import TrainLogs
from dnnlab.train.probes import pool_beta
from dnnlab.train.progress import EpochBar, result_lines
from dnnlab.train.records import KeepHistory
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import TrainSettings
from dnnlab.train.trial import Pruned


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
