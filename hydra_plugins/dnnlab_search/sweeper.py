"""dnnlab's Optuna sweeper (`hydra/sweeper=dnnlab`, preset `experiment=search`): Optuna's
ask/tell around whichever launcher Hydra has (basic, joblib, submitit), the study in the sweep
dir (`<sweep dir>/optuna.db`, SQLite).

- Each trial is a job: its overrides drawn define-by-run (space.Space), its number handed to the
  job through `hydra.job.env_set` (dnnlab.run.trial), the job dir numbered after the existing ones.
- A job's result: `best_val_accuracy` (what pipelines.train returns; never a test metric) told as
  COMPLETE; a job that failed (no value) as FAIL and the search goes on (up to
  `max_failure_rate` of a batch); a job whose results.json says `pruned` as PRUNED.
- The same command into the same sweep dir continues the study: the sampler's seed is `seed` +
  the number of trials already in it (a restarted seed would draw the same parameters again),
  and a trial a kill left RUNNING is launched again into its own job dir with its overrides,
  where `trainer.resume=auto` resumes it from its checkpoint.
- At the end: optimization_results.yaml (results.write_results).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from dnnlab.core.errors import ConfigError, DnnlabError
from dnnlab.run.lock import RunLock
from dnnlab.run.results import Results
from dnnlab.run.sweep_dir import job_dirs
from dnnlab.run.trial import PRUNER, STORAGE, STUDY, TRIAL, make_pruner, open_storage
from hydra_plugins.dnnlab_search.results import write_results
from hydra_plugins.dnnlab_search.space import Space

log = logging.getLogger(__name__)
JOB, OVERRIDES = "dnnlab:job", "dnnlab:overrides"  # a trial's user attrs: its job dir, overrides
SAMPLERS = ("tpe", "random")


def _quoted(s: str) -> str:  # a string value in Hydra's override grammar
    return "'" + str(s).replace("\\", "\\\\").replace("'", "\\'") + "'"


class DnnlabSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str, n_trials: int, n_jobs: int = 1,
                 direction: str = "maximize", sampler: str = "tpe", seed: int = 0,
                 pruner: str = "median", pruner_args: Any = None, max_failure_rate: float = 1.0,
                 params: Any = None):
        self.study_name, self.storage, self.n_trials = str(study_name), str(storage), n_trials
        self.n_jobs, self.direction, self.sampler_name = n_jobs, direction, str(sampler)
        self.seed, self.pruner_name, self.max_failure_rate = seed, str(pruner), max_failure_rate
        args = OmegaConf.to_container(pruner_args) if isinstance(
            pruner_args, DictConfig) else dict(pruner_args or {})
        self.pruner_args = dict(args.get(self.pruner_name) or {})  # the chosen pruner's
        self.params = params
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def _check(self) -> Any:
        for key, value, ok, expected in [
                ("n_trials", self.n_trials, isinstance(self.n_trials, int) and self.n_trials >= 0,
                 "an integer >= 0"),
                ("n_jobs", self.n_jobs, isinstance(self.n_jobs, int) and self.n_jobs >= 1,
                 "an integer >= 1 (trials per launch)"),
                ("direction", self.direction, self.direction in ("maximize", "minimize"),
                 "maximize | minimize"),
                ("sampler", self.sampler_name, self.sampler_name in SAMPLERS,
                 " | ".join(SAMPLERS)),
                ("max_failure_rate", self.max_failure_rate,
                 isinstance(self.max_failure_rate, (int, float))
                 and 0 <= self.max_failure_rate <= 1, "a number in [0, 1]")]:
            if not ok:
                raise ConfigError.at(f"hydra.sweeper.{key}", value, f"expected {expected}")
        return make_pruner(self.pruner_name, self.pruner_args)

    def _open(self, pruner: Any) -> Any:
        """The study (made or loaded), its sampler seeded after the trials it holds."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = open_storage(self.storage)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=store,
                                        direction=self.direction, load_if_exists=True)
        except ValueError as err:  # an existing study of another direction
            raise ConfigError(f"hydra.sweeper.study_name={self.study_name}: {err}") from None
        seed = int(self.seed) + len(study.trials)  # never the sequence an earlier run drew
        study.sampler = (optuna.samplers.TPESampler(seed=seed) if self.sampler_name == "tpe"
                         else optuna.samplers.RandomSampler(seed=seed))
        study.pruner = pruner
        study.set_user_attr(PRUNER, {"name": self.pruner_name, "args": self.pruner_args})
        return study

    def _env(self, number: int) -> list[str]:
        """The overrides that hand a job its trial (dnnlab.run.trial reads them)."""
        env = "hydra.job.env_set"
        return [f"++{env}.{TRIAL}={number}", f"++{env}.{STUDY}={_quoted(self.study_name)}",
                f"++{env}.{STORAGE}={_quoted(self.storage)}"]

    def _launch(self, study: Any, trials: list[tuple[int, list[str]]], job: int) -> None:
        """Launch `trials` ((number, overrides); jobs numbered from `job`) and tell the study
        each one's result."""
        import optuna

        state = optuna.trial.TrialState
        returns = self.launcher.launch([ov + self._env(n) for n, ov in trials],
                                       initial_job_idx=job)
        failed = []
        for (number, _), ret, j in zip(trials, returns, range(job, job + len(trials))):
            value = None
            try:
                value = ret.return_value
            except Exception as err:  # noqa: BLE001 - the job raised: recorded as FAIL
                log.warning(f"trial {number} failed: {err}")
            run_dir = OmegaConf.select(ret.hydra_cfg or {}, "hydra.runtime.output_dir")
            run_dir = Path(run_dir) if run_dir else Path(self.config.hydra.sweep.dir) / str(j)
            if Results.read(run_dir).get("status") == "pruned":
                study.tell(number, state=state.PRUNED)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                study.tell(number, float(value))
            else:
                study.tell(number, state=state.FAIL)
                failed.append(number)
        if trials and len(failed) / len(trials) > self.max_failure_rate:
            raise DnnlabError(f"the search stopped: trials {', '.join(map(str, failed))} failed "
                              f"({len(failed)} of {len(trials)} in a batch; "
                              f"hydra.sweeper.max_failure_rate={self.max_failure_rate})")

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        assert self.config is not None
        pruner = self._check()
        space = Space.parse(self.params, arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(sweep_dir):  # one sweeper per study: a RUNNING trial is an interrupted one
            study = self._open(pruner)
            for t in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,)):
                if JOB in t.user_attrs and OVERRIDES in t.user_attrs:
                    log.info(f"trial {t.number}: resumed in job dir {t.user_attrs[JOB]}")
                    self._launch(study, [(t.number, list(t.user_attrs[OVERRIDES]))],
                                 int(t.user_attrs[JOB]))
                else:  # killed between ask and launch: it never ran
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            left = int(self.n_trials)
            while left > 0:
                dirs = job_dirs(sweep_dir)
                job = max([int(dirs[-1].name) + 1 if dirs else 0] + [
                    int(t.user_attrs.get(JOB, -1)) + 1 for t in study.get_trials(deepcopy=False)])
                trials = []
                for i in range(min(left, int(self.n_jobs))):
                    trial = study.ask()
                    overrides = space.suggest(trial)
                    trial.set_user_attr(OVERRIDES, overrides)
                    trial.set_user_attr(JOB, job + i)
                    trials.append((trial.number, overrides))
                self._launch(study, trials, job)
                left -= len(trials)
            out = write_results(study, sweep_dir / "optimization_results.yaml")
            log.info(f"best trial {out['best_trial']}: {out['best_value']} {out['best_params']}; "
                     f"{out['states']}; optuna-dashboard {self.storage}")
