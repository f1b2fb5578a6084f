"""Search beyond grids: hydra-optuna-sweeper (`hydra/sweeper=optuna`), resumable in its sweep
dir. (A Hydra plugin must live in the hydra_plugins package, hence this file's place.)

The preset `experiment=search` stores the study in SQLite in the sweep dir
(`<sweep dir>/optuna.db`, study `search`), so the same command with the same `hydra.sweep.dir`
continues a killed search with its trials: the sampler sees them, and the new trials get the
next job numbers (the plugin would start again at 0, over the finished jobs' dirs).
Each trial is a job like a grid job: results.json, its W&B run, a row in the sweep summary.
"""
from __future__ import annotations

from pathlib import Path

from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as PluginSweeper
from omegaconf import DictConfig

from dnnlab.run.sweep_dir import job_dirs


class OptunaSweeper(PluginSweeper):
    """The plugin's sweeper; the sweep dir made before the study opens its SQLite file there,
    and job numbers continued after the dirs a previous run of the search left."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        done = job_dirs(sweep_dir)
        self.sweeper.job_idx = int(done[-1].name) + 1 if done else 0
