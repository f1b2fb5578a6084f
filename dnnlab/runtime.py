"""What every pipeline does around its job: typed settings, one owner per artifact, one W&B
run, errors as one line.

    register("smoothmax")                                 # its schema, in the ConfigStore

    @hydra.main(version_base="1.3", config_path="../conf", config_name="smoothmax")
    def main(cfg: DictConfig) -> dict:
        return run_job(cfg, "smoothmax", job)             # job(settings, run: Run)

    if __name__ == "__main__":
        launch("pipelines.smoothmax")

`run_job` locks the run dir, checks the config into typed settings, runs the pipeline's
`prepare` (everything that can refuse the config; it writes nothing), then the job with a
`Run`: its `results` (results.json, dnnlab.results.Results), its `tracker` (the W&B run and
metrics.jsonl) and its overrides. `launch` turns what Hydra and dnnlab raise into one line on
stderr: exit 2 for what Hydra finds while composing (an unknown option or key, a wrong type, a
malformed YAML), 1 for a bad value, a shape a network cannot take or a failed job, 130 for
Ctrl-C, 143 for SIGTERM. HYDRA_FULL_ERROR=1 shows tracebacks.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from dnnlab import hydra_job
from dnnlab.config import to_settings
from dnnlab.errors import DnnlabError, first_line
from dnnlab.lock import RunLock
from dnnlab.results import Results, read_json, write_json
from dnnlab.tracking import MIRROR, Tracker, run_name, run_tags, stored_run_id

console = Console() if Console().is_terminal else Console(width=150)
err_console = Console(stderr=True)
FAILED = "failed.json"  # a multirun job's error, read by the sweep summary and FailedJobs


def status(message: str):
    """A spinner in a terminal; nothing when output is piped (no refresh thread while timing)."""
    return console.status(message) if console.is_terminal else contextlib.nullcontext()


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@dataclass
class Run:
    """What a job is handed: where it writes and the owners of its artifacts."""

    dir: Path
    results: Results
    tracker: Tracker
    overrides: list[str] = field(default_factory=list)


class NothingToDo(Exception):
    """Raised by `prepare` when the run is already complete: the message is printed, nothing is
    written, and `result` is returned."""

    def __init__(self, message: str, result: Any):
        super().__init__(message)
        self.result = result


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it stops a run like Ctrl-C (exit 143)."""

    exit_code = 143


def _on_sigterm(signum, frame):
    raise Terminated()


def _is_fresh(run_dir: Path) -> bool:
    """A run dir Hydra has just made for this job: nothing in it but Hydra's empty log file."""
    try:
        return all(p.suffix == ".log" and p.stat().st_size == 0 for p in run_dir.iterdir())
    except OSError:
        return False


def run_job(cfg: DictConfig, pipeline: str, job: Callable[[Any, Run], Any],
            prepare: Callable[[Any, DictConfig, Path], Any] | None = None) -> Any:
    """Run `job(prepare(settings, cfg, run_dir) or settings, Run)` for one Hydra job. A
    `prepare` result with `resume = True` continues the run dir's W&B run. A config refused
    before the job starts leaves nothing behind (no W&B run, `.hydra/` untouched, a run dir this
    job made removed). In a multirun a failed job writes failed.json and the others go on."""
    hj = hydra_job.current()
    run_dir, fresh = hj.run_dir, _is_fresh(hj.run_dir)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        # a shell starts background jobs with SIGINT ignored: `kill -INT` must stop them too
        signal.signal(signal.SIGINT, signal.default_int_handler)
    results, started = None, False
    try:
        with RunLock(run_dir):
            if hj.multirun:
                hydra_job.write_hydra_dir(run_dir, cfg)  # the summary reads a failed job's too
            settings = to_settings(cfg)
            ready = prepare(settings, cfg, run_dir) if prepare is not None else settings
            hydra_job.write_hydra_dir(run_dir, cfg)
            config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            w = settings.wandb
            tracker = Tracker(
                w, run_dir, job_type=pipeline, config=config,
                name=run_name(w.run_name, pipeline, config, hj.overrides),
                tags=run_tags(w.run_name, pipeline, config, w.tags, hj.choices),
                group=w.group or hj.sweep_name,
                resume_id=stored_run_id(run_dir) if getattr(ready, "resume", False) else None)
            results, started = Results(run_dir), True
            with tracker:
                try:
                    return job(ready, Run(run_dir, results, tracker, hj.overrides))
                except DnnlabError as err:
                    results.update(status="failed", error=str(err))
                    raise
                except KeyboardInterrupt:
                    results.update(status="interrupted")
                    tracker.summary(status="interrupted")
                    raise
                finally:
                    files = [run_dir / n for n in (results.path.name, MIRROR)]
                    tracker.artifact("results", "results",
                                     [f for f in files + sorted(run_dir.glob("*.csv"))
                                      if f.exists()],
                                     metadata={"status": results.get("status", "finished")})
    except NothingToDo as done:
        console.print(str(done), highlight=False)
        return done.result
    except (DnnlabError, OSError) as err:
        line = str(err) if isinstance(err, DnnlabError) else (
            f"cannot write {err.filename or run_dir}: {err.strerror or err}")
        if hj.multirun:  # the job failed, the others go on; FailedJobs prints the line at the end
            with contextlib.suppress(OSError):
                write_json(run_dir / FAILED, {"error": line})
            return {}
        if not started and fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        error_line(line)
        sys.exit(getattr(err, "exit_code", 1))
    except KeyboardInterrupt as err:
        if not started and fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        line = getattr(err, "line", None) or (
            "interrupted before the job started; nothing was kept" if not started else
            f"interrupted; what the run wrote so far is in {run_dir}")
        err_console.print(line, highlight=False, soft_wrap=True)
        sys.exit(getattr(err, "exit_code", 130))


def describe(err: BaseException) -> tuple[str, int] | None:
    """(one line, exit status) for an error a user caused; None for anything else (a bug)."""
    import yaml
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    chain = [err]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 10:
            break
    if isinstance(err, DnnlabError):
        return str(err), getattr(err, "exit_code", 1)
    for e in chain:  # a malformed YAML: the file and the line
        if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
            mark = e.problem_mark
            where = next((x.args[0] for x in chain if isinstance(x, HydraException)
                          and "Error loading" in str(x)), mark.name)
            return f"{first_line(where)}: line {mark.line + 1}: {e.problem}", 2
    for e in chain:  # the run dir or a log file is unwritable (Hydra's logging set-up)
        if isinstance(e, OSError) and e.filename:
            return f"cannot write {e.filename}: {e.strerror or e}", 1
    if isinstance(err, MissingConfigException):
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        if err.options and group:
            return f"{group}={option}: no such config (options: {', '.join(err.options)})", 2
        return first_line(err), 2
    if isinstance(err, OverrideParseException):
        return f"{err.override}: {first_line(err)} (see Hydra's override grammar)", 2
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        cause = err.__cause__ or err.__context__
        if "Could not override" in str(err) and cause is not None:
            return f"{first_line(err)} ({first_line(cause)})", 2
        key = getattr(cause, "full_key", None) or getattr(err, "full_key", None)
        if isinstance(cause, OmegaConfBaseException) and key:
            return f"{key}: {first_line(cause)}", 2
        line = first_line(err)
        if cause is not None and first_line(cause) not in line:
            line = f"{line}: {first_line(cause)}"
        return line, 2
    return None


def launch(module: str) -> None:
    """A pipeline's `__main__`: run `<module>.main` (imported under its own name, so that the
    launchers that pickle the task, joblib and submitit, pickle it by reference) and report
    errors in one line."""
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we print the one line ourselves
    try:
        importlib.import_module(module).main()
    except KeyboardInterrupt as err:
        error_line("interrupted (Ctrl-C); what the run wrote so far is in its run dir")
        sys.exit(getattr(err, "exit_code", 130))
    except Exception as err:  # noqa: BLE001 - sorted below: user errors one line, bugs re-raised
        said = None if full else describe(err)
        if said is None:
            raise
        error_line(said[0])
        sys.exit(said[1])


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The numbered job dirs of a sweep dir, in job order."""
    if not sweep_dir.is_dir():
        return []
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))


class FailedJobs(Callback):
    """Hydra callback of every pipeline (conf/hydra/default.yaml). Before a multirun: a launcher
    that cannot start is one line. After it: an empty sweep is one line, and so is each failed
    job (its failed.json); exit 1 if any. The other jobs' results are kept."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if "SlurmLauncher" in target and not shutil.which("sbatch"):
            error_line("hydra/launcher=slurm: srun/sbatch not found; use "
                       "hydra/launcher=slurm_local to run the SLURM code path locally")
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = job_dirs(sweep_dir)
        if not jobs:
            if [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]:
                shutil.rmtree(sweep_dir)  # Hydra's record of a sweep that ran nothing
            error_line(f"the sweep launched no job (overrides: "
                       f"{' '.join(config.hydra.overrides.task) or 'none'}); nothing was run")
            sys.exit(1)
        failed = [(j, read_json(j / FAILED) or {}) for j in jobs if (j / FAILED).exists()]
        for j, f in failed:
            ov = read_overrides(j)
            error_line(f"job {j.name} ({' '.join(ov)}): {f.get('error', 'failed')}")
        if failed:
            sys.exit(1)


def read_overrides(job_dir: Path) -> list[str]:
    import yaml

    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(x) for x in (yaml.safe_load(path.read_text()) or [])] if path.exists() else []
