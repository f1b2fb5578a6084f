"""The summary of a multirun of pipelines.train (a temperature sweep, say), read from the
sweep dir: one row per job with its overrides, beta, test accuracy, gradient entropy and
status (done, running, failed: a job's `failed.json`).

`SweepSummary` (the Hydra callback of conf/train.yaml) rewrites summary.json and summary.png
after every job, so a failed or killed job never loses the others' results, and at the end of
the multirun logs the table and plot as their own W&B run (job_type sweep_summary) in the
sweep's group.
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dnnlab.beta import LOG10_BETA_INF, log10_beta
from dnnlab.cli import err_console
from dnnlab.config import settings_of
from dnnlab.naming import run_tags
from dnnlab.results import Results, read_json, write_json
from dnnlab.settings import WandbConfig
from dnnlab.sweep_dir import FAILED, job_dirs, read_overrides
from dnnlab.table import Table
from dnnlab.tracking import Tracker
from dnnlab.train.plots import plot_temperature_sweep

COLUMNS = ["job", "beta", "log10_beta", "test_accuracy", "grad_entropy", "argmax_mass",
           "status"]
# the sweep summary's live W&B line plots, drawn from its table: (x, y, title)
LINES = [("log10_beta", "test_accuracy",
          f"test accuracy against log10(beta) (inf at {LOG10_BETA_INF:g})"),
         ("log10_beta", "grad_entropy", "gradient entropy / log n against log10(beta)")]


def collect(sweep_dir: Path) -> list[dict]:
    """One row per numbered job dir of the sweep, in job order."""
    rows = []
    for job in job_dirs(Path(sweep_dir)):
        res = Results.read(job)
        failed = read_json(job / FAILED)
        status = "failed" if failed else ("done" if "test_accuracy" in res else "running")
        rows.append({"job": int(job.name), "overrides": read_overrides(job),
                     "beta": res.get("beta"),
                     "betas": res.get("betas") or {},
                     "test_accuracy": res.get("test_accuracy"),
                     "grad_entropy": res.get("grad_entropy"),
                     "argmax_mass": res.get("argmax_mass"), "status": status,
                     "error": (failed or {}).get("error") or res.get("error")})
    return rows


def write_summary(sweep_dir: Path) -> dict:
    """Rewrite <sweep_dir>/summary.json (and summary.png when a job is done); the summary."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    summary = {"sweep_dir": str(sweep_dir), "jobs": rows,
               "failed": [r["job"] for r in rows if r["status"] == "failed"]}
    write_json(sweep_dir / "summary.json", summary)
    plot_temperature_sweep(rows, sweep_dir / "summary.png")
    return summary


def summary_table(summary: dict) -> Table:
    """The jobs of a summary as a Table, ordered by beta, with a numeric `log10_beta`
    (dnnlab.beta.log10_beta) for W&B's line plots; beta as text: a number, "inf", or for a
    learnable beta "learnable" and each pooling layer's final value: "learnable (5.02, 4.93)".
    """

    def cell(r: dict, c: str) -> Any:
        if c == "beta":
            return _beta_text(r)
        if c == "log10_beta":
            return log10_beta(r["beta"])
        return r[c]

    jobs = sorted(summary["jobs"], key=lambda r: (log10_beta(r["beta"]) is None,
                                                  log10_beta(r["beta"]) or 0.0, r["job"]))
    rows = [[cell(r, c) for c in COLUMNS] for r in jobs]
    return Table("summary", COLUMNS, rows, title=f"sweep {summary['sweep_dir']} (by beta; "
                 f"log10_beta places inf at {LOG10_BETA_INF:g})")


def swept_keys(jobs: list[dict]) -> dict[str, list]:
    """{key: [its value in each job, in job order]} for the overrides whose values differ
    between the jobs (the sweep's own keys), then {key: value} under "fixed" for those every
    job shares."""
    values: dict[str, list] = {}
    for r in jobs:
        for o in r["overrides"]:
            key, _, value = str(o).partition("=")
            values.setdefault(key, []).append(value)
    n = len(jobs)
    swept = {k: v for k, v in values.items() if len(v) != n or len(set(v)) > 1}
    fixed = {k: v[0] for k, v in values.items() if k not in swept}
    return swept | ({"fixed": fixed} if fixed else {})


def _beta_text(row: dict) -> str:
    if row["beta"] == "learnable" and row.get("betas"):
        return f"learnable ({', '.join(f'{v:.3g}' for v in row['betas'].values())})"
    return str(row["beta"])


def log_summary_run(wandb: WandbConfig, sweep_dir: Path, group: str, summary: dict,
                    experiment: str | None = None) -> None:
    """The sweep's summary as its own W&B run in the sweep's group: config = the swept keys and
    their values; the table, a live line plot per LINES, the plot, the number of failed jobs."""
    if wandb.mode == "disabled":
        return
    table = summary_table(summary)
    config = {"sweep": swept_keys(summary["jobs"]), "sweep_dir": str(sweep_dir),
              "jobs": len(table.rows), "pipeline": "train"}
    tags = run_tags(wandb.run_name, "train", {}, wandb.tags, None,
                    *([experiment] if experiment else []), "sweep_summary")
    with Tracker(wandb, sweep_dir, job_type="sweep_summary", name=f"{group}-summary",
                 config=config, tags=tags, group=group) as tr:
        tr.table(table)
        for x, y, title in LINES:
            tr.line(table, x, y, title)
        if (sweep_dir / "summary.png").exists():
            tr.image("summary_plot", sweep_dir / "summary.png")
        tr.summary(failed_jobs=len(summary["failed"]))


class SweepSummary(Callback):
    """Hydra callback of a train multirun (conf/train.yaml `hydra.callbacks`): summary.json
    and summary.png after every job; the summary run at the end (none for an empty sweep)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if str(OmegaConf.select(config, "hydra.mode")) not in ("RunMode.MULTIRUN", "MULTIRUN"):
            return
        if job_return.status == JobStatus.FAILED:  # an error run_job did not catch
            try:
                _ = job_return.return_value  # raises the job's exception
            except Exception as err:  # noqa: BLE001 - recorded for the summary and FailedJobs
                write_json(Path(config.hydra.runtime.output_dir) / FAILED, {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": "".join(traceback.format_exception(err))})
        try:
            write_summary(Path(config.hydra.sweep.dir))
        except Exception as e:  # noqa: BLE001 - a summary must never fail a job
            err_console.print(f"warning: sweep summary failed: {e}", highlight=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not job_dirs(sweep_dir):
            return  # an empty sweep: FailedJobs refuses it
        try:
            wandb = settings_of(WandbConfig, config.get("wandb"), "wandb")
            group = wandb.group or f"{config.hydra.job.name}-{sweep_dir.name}"
            log_summary_run(wandb, sweep_dir, group, write_summary(sweep_dir),
                            OmegaConf.select(config, "hydra.runtime.choices.experiment"))
        except Exception as e:  # noqa: BLE001 - W&B must never sink a sweep
            err_console.print(f"warning: W&B sweep summary not logged: {e}", highlight=False)
