"""What every pipeline does around its job: a W&B run, errors as one line, non-zero exit."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from dnnlab.errors import DnnlabError
from dnnlab.tracking import Tracker, sweep_info

console = Console() if Console().is_terminal else Console(width=150)
err_console = Console(stderr=True)


def run_job(cfg: DictConfig, pipeline: str, job: Callable[[DictConfig, Tracker], dict]) -> dict:
    """Run `job(cfg, tracker)` inside a finished-on-exit W&B run.

    A DnnlabError (bad config, a shape a network cannot take, a bad temperature) is printed as
    one line `error: ...` and the process exits with status 1 (in a multirun the job is
    reported failed and the other jobs go on). What the job wrote before is kept.
    """
    try:
        with Tracker(cfg, pipeline) as tracker:
            try:
                return job(cfg, tracker)
            except DnnlabError as err:
                tracker.summary(error=str(err))
                raise
    except DnnlabError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        if sweep_info()[0]:
            raise
        sys.exit(1)


PLUGIN_OPTIONS = {"hydra/launcher": {"basic", "joblib", "submitit_slurm", "submitit_local"},
                  "hydra/sweeper": {"basic"}}


def check_group_overrides(argv: list, conf_dir: Path) -> None:
    """A `group=option` override naming a config that does not exist: one line, exit 2.

    (Hydra itself reports it with a search-path dump; this runs before Hydra.)
    """
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, _, value = arg.lstrip("+").partition("=")
        group_dir = conf_dir / key
        if not group_dir.is_dir() or key.startswith(("hydra.", "~")):
            continue
        known = {p.stem for p in group_dir.glob("*.yaml")} | PLUGIN_OPTIONS.get(key, set())
        for option in (v.strip() for v in value.split(",")):
            if option and option != "null" and option not in known:
                err_console.print(f"[bold red]error:[/] {key}={option}: no such config "
                                  f"(options: {', '.join(sorted(known))})", highlight=False,
                                  soft_wrap=True)
                sys.exit(2)


def launch(module: str) -> None:
    """A pipeline's `__main__`: check the config group options (one line if one does not
    exist), then run `<module>.main` imported under its own name, so that launchers that pickle
    the task (joblib, submitit) pickle it by reference, not by value from `__main__`."""
    import importlib

    check_group_overrides(sys.argv[1:], Path(__file__).resolve().parents[1] / "conf")
    importlib.import_module(module).main()
