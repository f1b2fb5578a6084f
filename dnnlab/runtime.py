"""What every pipeline does around its job: typed settings, a W&B run, errors as one line.

A pipeline is

    register("smoothmax")                                     # its schema, in the ConfigStore

    @hydra.main(version_base="1.3", config_path="../conf", config_name="smoothmax")
    def main(cfg: DictConfig) -> dict:
        return run_job(cfg, "smoothmax", job)                 # job(settings, tracker)

    if __name__ == "__main__":
        launch("pipelines.smoothmax")

`launch` runs `main` imported under the module's own name (launchers that pickle the task,
joblib and submitit, then pickle it by reference) and turns what Hydra and dnnlab raise into one
line on stderr: exit 2 for an unknown config option or key, or a value of the wrong type
(Hydra's own checks while composing), 1 for a bad value found by the settings' checks, a shape
a network cannot take, or a failed job; 130 for Ctrl-C. Set HYDRA_FULL_ERROR=1 for tracebacks.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from dnnlab.config import to_settings
from dnnlab.errors import DnnlabError
from dnnlab.tracking import Tracker, sweep_info

console = Console() if Console().is_terminal else Console(width=150)
err_console = Console(stderr=True)


def status(message: str):
    """A spinner in a terminal; nothing when output is piped (no refresh thread while timing)."""
    return console.status(message) if console.is_terminal else contextlib.nullcontext()


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def run_job(cfg: DictConfig, pipeline: str, job: Callable[[Any, Tracker], Any]) -> Any:
    """Check the config into typed settings, then run `job(settings, tracker)` inside a W&B run
    that is finished on exit. A DnnlabError is one line and exit status 1 (in a multirun the job
    is reported failed and the others go on). What the job wrote before is kept."""
    try:
        settings = to_settings(cfg)
        with Tracker(cfg, pipeline) as tracker:
            try:
                return job(settings, tracker)
            except DnnlabError as err:
                tracker.summary(error=str(err))
                raise
    except DnnlabError as err:
        if sweep_info()[0]:
            raise  # Hydra records the failed job; launch() prints the line
        error_line(str(err))
        sys.exit(1)


def _first_line(x: object) -> str:
    lines = [s.strip() for s in str(x).strip().splitlines() if s.strip()]
    return lines[0] if lines else type(x).__name__


def describe(err: BaseException) -> tuple[str, int] | None:
    """(one line, exit status) for an error a user caused; None for anything else (a bug)."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, DnnlabError):
        return str(err), 1
    if isinstance(err, MissingConfigException):
        missing = err.missing_cfg_file or ""
        group, _, option = missing.rpartition("/")
        if err.options and group:
            return f"{group}={option}: no such config (options: {', '.join(err.options)})", 2
        return _first_line(err), 2
    if isinstance(err, OverrideParseException):
        return f"{err.override}: {_first_line(err)} (see Hydra's override grammar)", 2
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        cause = err.__cause__ or err.__context__
        if "Could not override" in str(err) and cause is not None:
            return f"{_first_line(err)} ({_first_line(cause)})", 2
        key = getattr(cause, "full_key", None) or getattr(err, "full_key", None)
        if isinstance(cause, OmegaConfBaseException) and key:
            return f"{key}: {_first_line(cause)}", 2
        line = _first_line(err)
        if cause is not None and _first_line(cause) not in line:
            line = f"{line}: {_first_line(cause)}"
        return line, 2
    return None


def launch(module: str) -> None:
    """A pipeline's `__main__`: run `<module>.main` and report errors in one line."""
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we print the one line ourselves
    try:
        importlib.import_module(module).main()
    except KeyboardInterrupt:
        error_line("interrupted (Ctrl-C); what the run wrote so far is in its run dir")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - sorted below: user errors one line, bugs re-raised
        said = None if full else describe(err)
        if said is None:
            raise
        error_line(said[0])
        sys.exit(said[1])


class SweepSummary(Callback):
    """Hydra callback of a multirun (conf/train.yaml `hydra.callbacks`): after every job, and
    so as results come in, `dnnlab.train.sweep.write_summary` rewrites summary.json and
    summary.png in the sweep dir (a failed job's error goes to its `failed.json`); at the end of
    the multirun the summary table and plot go to W&B, in the sweep's group."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from dnnlab.tracking import write_json
        from dnnlab.train.sweep import write_summary

        if not _is_multirun(config):
            return
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            write_json(Path(config.hydra.runtime.output_dir) / "failed.json", {
                "error": f"{type(err).__name__}: {err}",
                "traceback": "".join(traceback.format_exception(err)) if isinstance(
                    err, BaseException) else ""})
        try:
            write_summary(Path(config.hydra.sweep.dir))
        except Exception as e:  # noqa: BLE001 - a summary must never fail a job
            err_console.print(f"warning: sweep summary failed: {e}", highlight=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dnnlab.tracking import log_sweep_summary
        from dnnlab.train.sweep import summary_table, write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        summary = write_summary(sweep_dir)
        log_sweep_summary(config, sweep_dir, summary_table(summary),
                          sweep_dir / "summary.png", failed=len(summary["failed"]))


def _is_multirun(config: DictConfig) -> bool:
    try:
        return str(config.hydra.mode) in ("RunMode.MULTIRUN", "MULTIRUN")
    except Exception:  # noqa: BLE001
        return False
