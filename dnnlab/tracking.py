"""Tracking: one W&B run per job, built from the Hydra config, mirrored on local disk.

Every pipeline uses `Tracker`:

    with Tracker(cfg, pipeline="opcount") as tr:
        tr.log({"loss": 0.1}, step=3)           # W&B history + metrics.jsonl
        tr.table(Table("layers", columns, rows)) # wandb.Table + layers.csv
        tr.image("gap_vs_beta", png_path)        # wandb.Image (the PNG is already in the run dir)
        tr.results["totals"] = {...}; tr.save()  # results.json, written as it goes
        tr.summary(reconciled=True)              # W&B summary + results.json

Only pipelines (and the runtime) hold a Tracker: library code returns results.

Config keys (conf/wandb/default.yaml): `wandb.mode` = offline (default: no account, no
network; `wandb sync <run dir>/wandb/offline-run-*` uploads later) | online | disabled;
`wandb.project`; `wandb.group` (default: in a multirun, the sweep's name, so a sweep's jobs
group together); `wandb.entity`; `wandb.tags`. job_type is the pipeline and the config is the
resolved Hydra config. Files go under the run dir. If W&B cannot start (online without
network, say), a warning is printed once and the run goes on offline, then disabled.

Each job's run is finished on exit (`with wandb.init(...)`): in wandb 0.31 a process that runs
several jobs (joblib workers) would otherwise log them all into the first run.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnnlab.table import Table, jsonable

_WARNED = False


def run_dir_of() -> Path:
    """The job's run dir: Hydra's runtime.output_dir (cwd when not under Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
        return Path(os.getcwd())


def sweep_info() -> tuple[bool, str | None, str | None]:
    """(is multirun, sweep name, job name within the sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return True, f"{hc.job.name}-{Path(hc.sweep.dir).name}", hc.job.override_dirname or str(
                hc.job.num)
        return False, None, hc.job.override_dirname or None
    except (ValueError, ImportError):
        return False, None, None


def _tags(tags) -> list[str]:
    """wandb.tags as a list of strings (one string is one tag)."""
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    return [str(t) for t in tags]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves a half-written results.json): a temp file,
    then a rename. If either fails (an unwritable dir or file), the temp file is removed and
    the OSError names `path`."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(jsonable(data), indent=2, allow_nan=False)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None


def _task_overrides() -> list[str]:
    """The job's task overrides as given on the command line ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):
        return []


class Tracker:
    """A W&B run for one job plus its local mirror in the run dir."""

    def __init__(self, cfg: DictConfig, pipeline: str, run_dir: Path | None = None,
                 use_wandb: bool = True):
        self.cfg, self.pipeline, self.use_wandb = cfg, pipeline, use_wandb
        self.run_dir = Path(run_dir) if run_dir is not None else run_dir_of()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.results: dict = {}
        self.run = None
        self._ctx = None
        self._metrics = open(self.run_dir / "metrics.jsonl", "a")
        self.overrides = _task_overrides()  # the job's command-line overrides

    # -- W&B ------------------------------------------------------------------------------------
    def _init_wandb(self):
        global _WARNED
        import wandb

        wcfg = self.cfg.get("wandb", None) or {}
        mode = getattr(wcfg.get("mode", "offline"), "value", wcfg.get("mode", "offline"))
        multirun, sweep, job = sweep_info()
        group = wcfg.get("group", None) or sweep
        kwargs = dict(
            project=wcfg.get("project", "dnnlab"), entity=wcfg.get("entity", None),
            group=group, job_type=self.pipeline, name=job or None,
            tags=_tags(wcfg.get("tags", None)), dir=str(self.run_dir),
            config=jsonable(OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)),
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True,
                                    init_timeout=float(wcfg.get("init_timeout", 60))),
        )
        modes = [mode] + [m for m in ("offline", "disabled") if m != mode]
        for i, m in enumerate(modes):
            try:
                return wandb.init(mode=m, **kwargs)
            except Exception as err:  # noqa: BLE001 - W&B must never sink a run
                if not _WARNED:
                    then = " then ".join(modes[i + 1:]) or "without W&B"
                    print(f"warning: W&B could not start in mode '{m}' ("
                          f"{(str(err).strip().splitlines() or [type(err).__name__])[0]}); "
                          f"carrying on {then}", file=sys.stderr)
                    _WARNED = True
        return None

    def __enter__(self) -> Tracker:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._ctx = self._init_wandb() if self.use_wandb else None
        self.run = self._ctx
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Save results.json (unless there is nothing to save) and finish the W&B run: exit code
        0, 1 on an error, 130/143 and summary status "interrupted" on Ctrl-C / SIGTERM."""
        code = 1 if exc_type else 0
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            code = getattr(exc, "exit_code", 130)
            self.results["status"] = "interrupted"
            if self.run is not None:
                self.run.summary["status"] = "interrupted"
        try:
            if self.results:
                self.save()
        finally:
            self._metrics.close()
            if self.run is not None:
                self.run.finish(exit_code=code)
            self.run = None

    # -- logging --------------------------------------------------------------------------------
    def log(self, metrics: dict, step: int | None = None) -> None:
        """Log scalars to W&B and append them to metrics.jsonl."""
        rec = dict(metrics)
        if step is not None:
            rec["_step"] = step
        self._metrics.write(json.dumps(jsonable(rec)) + "\n")
        self._metrics.flush()
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items()}, step=step)

    def summary(self, **kv: Any) -> None:
        """Set W&B summary values and store them in results.json."""
        self.results.update(kv)
        if self.run is not None:
            for k, v in kv.items():
                self.run.summary[k] = jsonable(v) if isinstance(v, (dict, list)) else v
        self.save()

    def table(self, table: Table) -> None:
        """A Table as <key>.csv in the run dir and a wandb.Table."""
        table.to_csv(self.run_dir)
        if self.run is not None:
            self.run.log({table.key: table.to_wandb()})

    def image(self, key: str, path: Path, caption: str | None = None) -> None:
        """A PNG already saved in the run dir, logged to W&B as an image."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)})

    def save(self) -> None:
        """Write results.json now (pipelines call this as results come in)."""
        write_json(self.run_dir / "results.json", self.results)


def log_sweep_summary(config: DictConfig, sweep_dir: Path, table: Table, png: Path,
                      failed: int) -> None:
    """The summary of a multirun as its own W&B run (job_type sweep_summary) in the sweep's
    group: the table, the plot (if written) and the number of failed jobs."""
    import wandb

    w = config.get("wandb", None) or {}
    mode = getattr(w.get("mode", "offline"), "value", w.get("mode", "offline"))
    if mode == "disabled":
        return
    group = w.get("group") or f"{config.hydra.job.name}-{sweep_dir.name}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with wandb.init(project=w.get("project", "dnnlab"), entity=w.get("entity"),
                            group=group, job_type="sweep_summary", name="summary",
                            dir=str(sweep_dir), mode=mode, reinit="finish_previous",
                            settings=wandb.Settings(console="off", x_disable_stats=True,
                                                    silent=True)) as run:
                run.log({"summary": table.to_wandb()})
                if png.exists():
                    run.log({"summary_plot": wandb.Image(str(png))})
                run.summary["failed_jobs"] = failed
    except Exception as e:  # noqa: BLE001 - W&B must never sink a sweep
        print(f"warning: W&B sweep summary not logged: {e}", file=sys.stderr)
