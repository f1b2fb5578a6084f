"""What every pipeline does around its job: typed settings, one owner per artifact, one W&B
run, errors as one line. A pipeline's `main` is `return run_job(cfg, "smoothmax", job)`.

`run_job` locks the run dir, checks the config into typed settings, runs the pipeline's
`prepare(settings, context)` (builds and validates everything that can refuse the config and
writes nothing; a dnnlab.core.outputs.Prepared), then the job with a `Run`: its `results`
(results.json, dnnlab.run.results.Results), its `tracker` (the W&B run and metrics.jsonl) and its
overrides. The job computes and returns its Outputs; run_job writes them (results.json, the
tracker, the terminal). `launch` (dnnlab.run.cli) reports errors in one line.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnnlab.core.distributed import World
from dnnlab.core.errors import DnnlabError
from dnnlab.core.jsonio import write_json
from dnnlab.core.outputs import Outputs
from dnnlab.core.table import Table
from dnnlab.run import hydra_job
from dnnlab.run.cli import console, err_console, error_line, stopping
from dnnlab.run.config import resolved_with, to_settings
from dnnlab.run.lock import FILE as LOCK
from dnnlab.run.lock import RunLock
from dnnlab.run.naming import run_name, run_tags
from dnnlab.run.results import Results
from dnnlab.run.settings import wandb_from_env
from dnnlab.run.sweep_dir import FAILED
from dnnlab.run.tracking import MIRROR, Tracker, stored_run_id


@dataclass
class Run:  # what a job is handed: where it writes and the owners of its artifacts
    dir: Path
    results: Results
    tracker: Tracker
    overrides: list[str] = field(default_factory=list)
    world: World = field(default_factory=World)  # the processes of one run (rank 0 writes)
    label: str = ""  # `job 3 (overrides): ` in a multirun, before a job's last line


@dataclass
class Context:  # what `prepare` may read besides the settings (it writes nothing)
    run_dir: Path
    config: dict  # the resolved config
    config_with: Callable[[dict], dict]  # the config resolved after setting some dotted keys


class NothingToDo(Exception):  # from `prepare`: the run is complete; print, return `result`
    def __init__(self, message: str, result: Any):
        super().__init__(message)
        self.result = result


class Terminated(KeyboardInterrupt):  # SIGTERM stops a run like Ctrl-C, with exit 143
    exit_code = 143


def _on_sigterm(signum, frame):
    raise Terminated()


def _stop_when_orphaned() -> None:
    """Under submitit: if the process that started this job goes (its controller killed, e.g.
    by a SIGUSR2 it does not handle), stop as on Ctrl-C (checkpoint kept, status interrupted;
    submitit passes SIGTERM over) instead of training on as an orphan nobody waits for."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="dnnlab-orphan-watch", daemon=True).start()


def _is_fresh(run_dir: Path) -> bool:
    """A run dir Hydra has just made for this job: nothing in it but Hydra's empty log file."""
    try:
        return all(p.suffix == ".log" and p.stat().st_size == 0 for p in run_dir.iterdir())
    except OSError:
        return False


REPLACED = "replaced-"  # <run dir>/replaced-<time>/: a run started over, set aside


def set_aside(run_dir: Path, keep: tuple[str, ...] = ()) -> Path | None:
    """Move what an earlier run left in `run_dir` into `<run dir>/replaced-<time>/`, so that a
    run that starts over there (trainer.resume=false, or no checkpoint to resume) never appends
    to the old one's metrics.jsonl, W&B dir or results. Kept: the lock, earlier replaced-*
    dirs and the names in `keep`; a Hydra log file is copied and emptied (Hydra holds it open).
    Returns the dir, or None when there was nothing to move."""
    old = [p for p in sorted(run_dir.iterdir()) if p.name != LOCK and p.name not in keep
           and not p.name.startswith(REPLACED)
           and not (p.suffix == ".log" and p.is_file() and p.stat().st_size == 0)]
    if not old:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = run_dir / f"{REPLACED}{stamp}", 1
    while dest.exists():
        n += 1
        dest = run_dir / f"{REPLACED}{stamp}-{n}"
    dest.mkdir()
    for p in old:
        if p.suffix == ".log" and p.is_file():  # Hydra's job log, open for this run
            shutil.copy2(p, dest / p.name)
            os.truncate(p, 0)
        else:
            os.replace(p, dest / p.name)
    return dest


def emit(out: Outputs, run: Run) -> Results:
    """A job's Outputs written: results.json, the tracker (tables, images, summary), then the
    terminal (rank 0), and its failure raised once all of it is kept."""
    run.results.update(out.results)
    for table in out.tables:
        run.tracker.table(table)
    for key, png in out.images.items():
        run.tracker.image(key, png, caption=out.captions.get(key))
    run.tracker.summary(**out.summary)
    if run.world.is_main:
        for item in out.show:
            if isinstance(item, str):
                console.print(item, highlight=False, soft_wrap=True)
            else:  # a Table, or a rich renderable (a tree, a table cut to its first rows)
                console.print(item.to_rich() if isinstance(item, Table) else item)
        console.print(out.footer.replace("{path}", str(run.results.path)), highlight=False,
                      soft_wrap=True)
    if out.failure:
        raise DnnlabError(out.failure)
    return run.results


def run_job(cfg: DictConfig, pipeline: str, job: Callable[[Any, Run], Any],
            prepare: Callable[[Any, Context], Any] | None = None,
            wandb_config: Callable[[dict], dict] | None = None,
            distributed: bool = False) -> Any:
    """Run `job(prepare(settings, Context) or settings, Run)` for one Hydra job; Outputs it
    returns are written by `emit`. A `prepare` result with `resume = True` continues the run
    dir's W&B run. `wandb_config`
    gives the W&B run's config from the resolved one (one type per key). A config refused
    before the job starts leaves nothing behind (no W&B run, `.hydra/` untouched, a run dir this
    job made removed). In a multirun a failed job writes failed.json and the others go on.
    `distributed`: under torchrun or SLURM tasks the job's processes form one run (dnnlab.
    distributed): rank 0's run dir is everyone's, and only rank 0 writes to it."""
    hj = hydra_job.current()
    world = World.from_env() if distributed else World()
    world.init()
    run_dir, fresh = hj.run_dir, _is_fresh(hj.run_dir)
    if world.size > 1:
        run_dir = Path(world.broadcast(str(run_dir)))
        if not world.is_main and fresh and run_dir != hj.run_dir:  # its own, made by Hydra
            shutil.rmtree(hj.run_dir, ignore_errors=True)
        fresh = fresh and world.is_main
        world.barrier()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops the run like Ctrl-C, unless a launcher handles it (submitit: the
        # pre-emption signal is SIGUSR2, which requeues the job; its SIGTERM is passed over)
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None, _on_sigterm):
            signal.signal(signal.SIGTERM, _on_sigterm)
        # a shell starts background jobs with SIGINT ignored: `kill -INT` must stop them too
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "SUBMITIT_EXECUTOR" in os.environ:
            _stop_when_orphaned()
    results, started = None, False
    try:
        with RunLock(run_dir) if world.is_main else contextlib.nullcontext():
            # a new job's .hydra/ first (the summary reads a failed job's overrides too); a run
            # dir's own only once accepted: a refused resume leaves .hydra/ as it was
            first = hj.multirun and not (run_dir / ".hydra").exists() and world.is_main
            wandb_from_env(cfg.wandb, hj.overrides)  # WANDB_MODE etc. where not set explicitly
            if first:
                hydra_job.write_hydra_dir(run_dir, cfg)
            settings = to_settings(cfg)
            config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            ready = settings if prepare is None else prepare(settings, Context(
                run_dir, config, lambda values: resolved_with(cfg, values)))
            if not getattr(ready, "resume", False) and not fresh and world.is_main:
                aside = set_aside(run_dir, keep=(".hydra",) if first else ())
                if aside is not None:
                    console.print(f"starting over in {run_dir}: the previous run's files were "
                                  f"moved to {aside}", highlight=False, soft_wrap=True)
            if not first and world.is_main:
                hydra_job.write_hydra_dir(run_dir, cfg)
            if world.is_main:
                (run_dir / FAILED).unlink(missing_ok=True)  # a failed attempt's, run again
            w = settings.wandb if world.is_main else replace(settings.wandb, mode="disabled")
            tracker = Tracker(
                w, run_dir, job_type=pipeline,
                config=wandb_config(config) if wandb_config else config,
                name=run_name(w.run_name, pipeline, config, hj.overrides),
                tags=run_tags(w.run_name, pipeline, config, w.tags, hj.choices),
                group=w.group or hj.sweep_name,
                resume_id=stored_run_id(run_dir) if getattr(ready, "resume", False) else None,
                mirror=world.is_main)
            results, started = Results(run_dir, write=world.is_main), True
            results.update(status="running")  # then done, failed or interrupted
            with tracker:
                try:
                    run = Run(run_dir, results, tracker, hj.overrides, world, hj.label())
                    out = job(ready, run)
                    if isinstance(out, Outputs):
                        out = emit(out, run)
                    if results.get("status") == "running":  # else the job's own (pruned)
                        results.update(status="done")
                    return out
                except DnnlabError as err:
                    results.update(status="failed", error=str(err))
                    raise
                except KeyboardInterrupt:
                    stopping()  # a second Ctrl-C must not cut the saving short
                    results.update(status="interrupted")
                    tracker.summary(status="interrupted")
                    raise
                finally:
                    files = [run_dir / n for n in (results.path.name, MIRROR)]
                    tracker.artifact("results", "results",
                                     [f for f in files + sorted(run_dir.glob("*.csv"))
                                      if f.exists()],
                                     metadata={"status": results.get("status")})
    except NothingToDo as done:
        if world.is_main:
            console.print(str(done), highlight=False, soft_wrap=True)  # one line
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
        if world.is_main:  # the other ranks' line is rank 0's (or names them)
            error_line(line)
        sys.exit(getattr(err, "exit_code", 1))
    except KeyboardInterrupt as err:
        if not started and fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        line = getattr(err, "line", None) or (
            "interrupted before the job started; nothing was kept" if not started else
            f"interrupted; what the run wrote so far is in {run_dir}")
        if world.is_main:
            err_console.print(line, highlight=False, soft_wrap=True)
        sys.exit(getattr(err, "exit_code", 130))
    finally:
        world.close()


