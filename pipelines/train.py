"""Train a network of dnnlab layers and watch docs/math.md (1c) and (3b) at work (docs/train.md).
Its `prepare` and `job` are dnnlab.run.train_job's; `trainer.processes=N` runs it as N
processes (dnnlab.run.processes). `main` returns the best validation accuracy, what a sweeper
optimizes (never a test metric)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnnlab.run.cli import launch
from dnnlab.run.config import register
from dnnlab.train.settings import TrainSettings

# torch, W&B and the rest load in `main`, not here: `--help` and a config error (refused while
# Hydra composes, before `main` runs) need only the schema

register("train", TrainSettings)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dnnlab.run.processes import spawned
    from dnnlab.run.runtime import run_job
    from dnnlab.run.train_job import job, prepare
    from dnnlab.train.logs import wandb_config

    results = spawned(cfg, "pipelines.train")  # trainer.processes=N: N processes, one run
    if results is None:
        results = run_job(cfg, "train", job, prepare=prepare, wandb_config=wandb_config,
                          distributed=True)
    return results.get("best_val_accuracy")


if __name__ == "__main__":
    launch("pipelines.train")
