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
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from dnnlab.config import to_settings
from dnnlab.errors import DnnlabError
from dnnlab.tracking import Tracker, run_dir_of, sweep_info

console = Console() if Console().is_terminal else Console(width=150)

DIRNAME_MAX = 80  # characters of the overrides in a run dir's name


def _overrides_dirname(overrides: str) -> str:
    """`_<overrides>` for a run dir's name (Hydra's override_dirname, '/' -> '_', at most
    DIRNAME_MAX characters); '' without overrides."""
    s = str(overrides or "").replace("/", "_").replace(os.sep, "_")
    return f"_{s[:DIRNAME_MAX]}" if s else ""


# conf/hydra/default.yaml: run dirs named <time>-<pid>_<overrides>. Cached, so that a multirun's
# workers (which get a copy of the resolver cache) agree with the main process.
OmegaConf.register_new_resolver("dnnlab_pid", lambda: str(os.getpid()), use_cache=True,
                                replace=True)
OmegaConf.register_new_resolver("dnnlab_overrides", _overrides_dirname, use_cache=True,
                                replace=True)
err_console = Console(stderr=True)


def status(message: str):
    """A spinner in a terminal; nothing when output is piped (no refresh thread while timing)."""
    return console.status(message) if console.is_terminal else contextlib.nullcontext()


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class NothingToDo(Exception):
    """Raised by a pipeline's `prepare` when the run is already complete (a resume of a
    finished run with the same config): `run_job` prints the message, writes nothing and
    returns `result`."""

    def __init__(self, message: str, result: Any):
        super().__init__(message)
        self.result = result


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by run_job's handler so that it stops a run like
    Ctrl-C (exit status 143 instead of 130)."""

    exit_code = 143


def _on_sigterm(signum, frame):
    raise Terminated()


def _is_fresh(run_dir: Path) -> bool:
    """A run dir Hydra has just made for this job: nothing in it but Hydra's log file."""
    try:
        return all(p.suffix == ".log" and p.stat().st_size == 0 for p in run_dir.iterdir())
    except OSError:
        return False


def _write_hydra_dir(run_dir: Path) -> None:
    """Hydra's `.hydra/` (config.yaml, hydra.yaml, overrides.yaml), written here once the config
    is accepted (conf/hydra/default.yaml sets output_subdir: null): a refused config or resume
    leaves an existing run's record as it was."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.instance().cfg
    except ValueError:
        return
    if hc is None:
        return
    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    task = _TASK_CFG.get("cfg")
    files = {"hydra.yaml": hc, "overrides.yaml": hc.hydra.overrides.task}
    if task is not None:
        files["config.yaml"] = task
    for name, node in files.items():
        tmp = d / (name + ".tmp")
        tmp.write_text(OmegaConf.to_yaml(node))
        os.replace(tmp, d / name)


_TASK_CFG: dict = {}
_FAILED: list[str] = []  # failed jobs of a multirun run in this process (one line each)


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return [str(o) for o in HydraConfig.get().overrides.task]
    except ValueError:
        return []


def _cleanup(run_dir: Path, fresh: bool) -> None:
    """After a refused config: remove the run dir if this job made it (single runs only; a
    multirun keeps its job dirs for the sweep summary)."""
    if fresh and not sweep_info()[0]:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_job(cfg: DictConfig, pipeline: str, job: Callable[[Any, Tracker], Any],
            prepare: Callable[[Any, DictConfig, Path], Any] | None = None) -> Any:
    """Check the config into typed settings, run `prepare(settings, cfg, run_dir)` if given
    (everything that can refuse the config: data, model, shapes, a resume; it must write
    nothing), then `job(prepared or settings, tracker)` inside a W&B run that is finished on
    exit. A config refused before the job starts leaves nothing behind: no W&B run, no
    `.hydra/` rewritten, and a run dir this job made is removed. A DnnlabError is one line and
    exit status 1 (in a multirun the job is reported failed and the others go on). Ctrl-C,
    SIGINT or SIGTERM: one line (the pipeline's `err.line` if it set one), the W&B run finished
    as interrupted, exit 130 (143 for SIGTERM). What the job wrote before is kept."""
    run_dir = run_dir_of()
    fresh = _is_fresh(run_dir)
    _TASK_CFG["cfg"] = cfg
    multirun = sweep_info()[0]
    if multirun:
        _write_hydra_dir(run_dir)  # the sweep summary reads a failed job's overrides too
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        # a shell starts background jobs with SIGINT ignored: `kill -INT` must stop them too
        signal.signal(signal.SIGINT, signal.default_int_handler)
    tracker = None
    try:
        settings = to_settings(cfg)
        ready = prepare(settings, cfg, run_dir) if prepare is not None else settings
        if not multirun:
            _write_hydra_dir(run_dir)
        resume = bool(OmegaConf.select(cfg, "trainer.resume", default=False))
        with Tracker(cfg, pipeline, run_dir=run_dir, resume=resume) as tracker:
            try:
                return job(ready, tracker)
            except DnnlabError as err:
                tracker.summary(error=str(err))
                raise
    except NothingToDo as done:
        console.print(str(done), highlight=False)
        return done.result
    except (DnnlabError, OSError) as err:
        line = str(err) if isinstance(err, DnnlabError) else (
            f"cannot write {err.filename or run_dir}: {err.strerror or err}")
        if multirun:  # the job failed, the others go on; FailedJobs prints the line at the end
            from dnnlab.tracking import write_json

            with contextlib.suppress(OSError):
                write_json(run_dir / "failed.json", {"error": line})
            _FAILED.append(f"job {run_dir.name} ({' '.join(_overrides())}): {line}")
            return {}
        if tracker is None:
            _cleanup(run_dir, fresh)
        error_line(line)
        sys.exit(1)
    except KeyboardInterrupt as err:
        if tracker is None:
            _cleanup(run_dir, fresh)
        line = getattr(err, "line", None) or (
            "interrupted before training started; nothing was kept" if tracker is None else
            f"interrupted; what the run wrote so far is in {run_dir}")
        err_console.print(line, highlight=False, soft_wrap=True)
        sys.exit(getattr(err, "exit_code", 130))


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
        if _FAILED:  # a multirun without the FailedJobs callback: its failed jobs, one line each
            for line in _FAILED:
                error_line(line)
            sys.exit(1)
    except KeyboardInterrupt as err:
        error_line("interrupted (Ctrl-C); what the run wrote so far is in its run dir")
        sys.exit(getattr(err, "exit_code", 130))
    except Exception as err:  # noqa: BLE001 - sorted below: user errors one line, bugs re-raised
        said = None if full else describe(err)
        if said is None and isinstance(err, OSError) and not full:
            said = (f"cannot write {err.filename or ''}: {err.strerror or err}", 1)  # run dir
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
        from dnnlab.train.sweep import LINES, summary_table, swept_keys, write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        summary = write_summary(sweep_dir)
        log_sweep_summary(config, sweep_dir, summary_table(summary),
                          sweep_dir / "summary.png", failed=len(summary["failed"]),
                          swept=swept_keys(summary["jobs"]), lines=LINES)


class FailedJobs(Callback):
    """Hydra callback of every pipeline (conf/hydra/default.yaml): at the end of a multirun, one
    line per failed job (its `failed.json`, written by run_job), no traceback, and exit status
    1 if any failed. The other jobs' results are kept."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import json

        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted((p for p in sweep_dir.glob("*/failed.json")),
                        key=lambda p: (len(p.parent.name), p.parent.name))
        for f in failed:
            ov = f.parent / ".hydra" / "overrides.yaml"
            overrides = " ".join(yaml_list(ov)) if ov.exists() else ""
            error_line(f"job {f.parent.name} ({overrides}): {json.loads(f.read_text())['error']}")
        _FAILED.clear()  # said here (the lines of every launcher's jobs, from their dirs)
        if failed:
            sys.exit(1)


def yaml_list(path: Path) -> list[str]:
    import yaml

    return [str(x) for x in (yaml.safe_load(path.read_text()) or [])]


def _is_multirun(config: DictConfig) -> bool:
    try:
        return str(config.hydra.mode) in ("RunMode.MULTIRUN", "MULTIRUN")
    except Exception:  # noqa: BLE001
        return False
