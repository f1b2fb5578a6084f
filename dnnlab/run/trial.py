"""A job's link to its Optuna trial (experiment=search, hydra_plugins/dnnlab_search): the
runner side of pruning, beside dnnlab.run.runtime, so that the training code never imports Optuna.

The sweeper hands each job its trial through Hydra's `hydra.job.env_set` (environment variables
set for the job's duration in whichever process runs it: joblib's and submitit's too), and the
job finds the trial through the study's storage:

    link = TrialLink.from_env()           # None outside a search
    if link is not None and link.report(epoch, val_accuracy):   # True: the pruner says stop
        ...

The pruner is the one the sweeper stored in the study's user attrs (PRUNER), so that the job and
the sweeper agree on it without passing its settings twice.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from dnnlab.core.errors import ConfigError, first_line
from dnnlab.run.cli import console
from dnnlab.train.records import best_of
from dnnlab.train.trial import Pruned, ReportToTrial

if TYPE_CHECKING:  # runtime imports torch (World): Hydra loads this module with its plugins
    from dnnlab.run.runtime import Run

TRIAL, STUDY, STORAGE = "DNNLAB_TRIAL", "DNNLAB_STUDY", "DNNLAB_STORAGE"  # set by the sweeper
PRUNER = "dnnlab:pruner"  # the study's user attr: {"name": none|median|hyperband, "args": {...}}
PRUNERS = ("none", "median", "hyperband")


def make_pruner(name: str, args: dict | None = None) -> Any:
    """The Optuna pruner `name` (PRUNERS) with its keyword `args`; ConfigError naming the key."""
    import optuna

    cls = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner}.get(str(name))
    if cls is None:
        raise ConfigError.at("hydra.sweeper.pruner", name, f"expected one of {', '.join(PRUNERS)}")
    try:
        return cls(**dict(args or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"hydra.sweeper.pruner_args.{name}={dict(args or {})}: not accepted "
                          f"by {cls.__name__} ({first_line(err)})") from None


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at `url` (SQLite waits up to a minute for a lock: the sweeper and its
    jobs write to one file); ConfigError when it cannot be opened."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if str(url).startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(str(url), engine_kwargs=kwargs)
    except Exception as err:  # noqa: BLE001 - a bad URL, a missing driver, an unwritable dir
        raise ConfigError(f"hydra.sweeper.storage={url}: cannot open it "
                          f"({first_line(err)[:200]})") from None


class TrialLink:
    """Trial `number` of study `study_name` in `storage`, as a job reports to it."""

    def __init__(self, storage: str, study_name: str, number: int):
        import optuna

        store = open_storage(storage)
        study_id = store.get_study_id_from_name(study_name)
        spec = store.get_study_user_attrs(study_id).get(PRUNER) or {"name": "none"}
        self.study = optuna.load_study(study_name=study_name, storage=store,
                                       sampler=optuna.samplers.RandomSampler(),
                                       pruner=make_pruner(spec["name"], spec.get("args")))
        self.number, self.store = number, store
        self.trial_id = store.get_trial_id_from_study_id_trial_number(study_id, number)
        self.trial = optuna.trial.Trial(self.study, self.trial_id)

    @classmethod
    def from_env(cls) -> TrialLink | None:
        """The trial the sweeper handed this job (TRIAL, STUDY, STORAGE), or None."""
        if not os.environ.get(TRIAL):
            return None
        return cls(os.environ[STORAGE], os.environ[STUDY], int(os.environ[TRIAL]))

    def report(self, epoch: int, value: float) -> bool:
        """Report `value` at step `epoch` (once: a resumed trial passes over the epochs it had
        reported) and return whether the pruner stops the trial here."""
        if epoch not in self.store.get_trial(self.trial_id).intermediate_values:
            self.trial.report(value, epoch)
        return bool(self.trial.should_prune())


def trial_callbacks(run: Run) -> list:
    """experiment=search: rank 0 reports each epoch's val accuracy to the job's Optuna trial,
    and every rank stops when the pruner says so. Last in a callback list: the epoch's records
    are written before."""
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
