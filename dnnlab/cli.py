"""What every pipeline does around its job: a W&B run, errors as one line, non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable

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
