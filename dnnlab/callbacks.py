"""Hydra callback: the summary of a temperature sweep (or any multirun of pipelines.train).

After every job (so a failed or killed job never loses the others' results) it rewrites, in the
sweep dir, `summary.json` (one row per job: its overrides, beta, test accuracy, gradient
entropy, status) and `summary.png` (test accuracy and relative gradient entropy against beta);
at the end of the multirun it logs the table and plot to W&B, in the sweep's group.
"""
from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dnnlab.tracking import write_json


def _is_multirun(config: DictConfig) -> bool:
    try:
        return str(config.hydra.mode) in ("RunMode.MULTIRUN", "MULTIRUN")
    except Exception:  # noqa: BLE001
        return False


def _beta_key(b: Any) -> float:
    if isinstance(b, (int, float)):
        return float(b)
    return math.inf if str(b) == "inf" else math.nan


def collect(sweep_dir: Path) -> list:
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name)):
        ov = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(ov)) if ov.exists() else []
        res = json.loads((job / "results.json").read_text()) if (
            job / "results.json").exists() else {}
        failed = json.loads((job / "failed.json").read_text()) if (
            job / "failed.json").exists() else None
        status = "failed" if failed else ("done" if "test_accuracy" in res else "running")
        rows.append({"job": int(job.name), "overrides": overrides, "beta": res.get("beta"),
                     "test_accuracy": res.get("test_accuracy"),
                     "grad_entropy": res.get("grad_entropy"),
                     "argmax_mass": res.get("argmax_mass"), "status": status,
                     "error": (failed or {}).get("error") or res.get("error")})
    return rows


def plot(rows: list, path: Path) -> Path | None:
    from dnnlab.plots import plt, save

    done = [r for r in rows if r["status"] == "done"]
    num = [r for r in done if math.isfinite(_beta_key(r["beta"])) or _beta_key(r["beta"]) == math.inf]
    if not num:
        return None
    finite = [_beta_key(r["beta"]) for r in num if math.isfinite(_beta_key(r["beta"]))]
    x_inf = (max(finite) * 4) if finite else 1.0
    num.sort(key=lambda r: _beta_key(r["beta"]))
    xs = [_beta_key(r["beta"]) if math.isfinite(_beta_key(r["beta"])) else x_inf for r in num]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(xs, [r["test_accuracy"] for r in num], "o-", color="tab:blue", label="test accuracy")
    ax1.set_xscale("log")
    ax1.set_xlabel("beta (inverse temperature of the smooth-max pooling)")
    ax1.set_ylabel("test accuracy", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [r["grad_entropy"] for r in num], "s--", color="tab:red",
              label="entropy of softmax(beta x) / log n")
    ax2.set_ylabel("pooling gradient entropy / log(n)", color="tab:red")
    ax2.set_ylim(-0.05, 1.05)
    ticks = sorted(set(xs))
    has_inf = _beta_key(num[-1]["beta"]) == math.inf  # num is sorted: inf comes last
    ax1.set_xticks(ticks)
    ax1.set_xticklabels(["inf" if has_inf and t == x_inf else f"{t:g}" for t in ticks])
    ax1.set_title("Temperature sweep: accuracy and pooling-gradient entropy vs beta (seed 1c)")
    ax1.grid(alpha=0.3)
    return save(fig, path)


def write_summary(sweep_dir: Path) -> dict:
    rows = collect(sweep_dir)
    summary = {"sweep_dir": str(sweep_dir), "jobs": rows,
               "failed": [r["job"] for r in rows if r["status"] == "failed"]}
    write_json(sweep_dir / "summary.json", summary)
    plot(rows, sweep_dir / "summary.png")
    return summary


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            write_json(job_dir / "failed.json", {
                "error": f"{type(err).__name__}: {err}",
                "traceback": "".join(traceback.format_exception(err)) if isinstance(
                    err, BaseException) else ""})
        try:
            write_summary(Path(config.hydra.sweep.dir))
        except Exception as e:  # noqa: BLE001 - a summary must never fail a job
            print(f"warning: sweep summary failed: {e}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        summary = write_summary(sweep_dir)
        _log_wandb(config, sweep_dir, summary)


def _log_wandb(config: DictConfig, sweep_dir: Path, summary: dict) -> None:
    import warnings

    import wandb

    w = config.get("wandb", {}) or {}
    mode = str(w.get("mode", "offline"))
    if mode == "disabled":
        return
    group = w.get("group") or f"{config.hydra.job.name}-{sweep_dir.name}"
    cols = ["job", "beta", "test_accuracy", "grad_entropy", "argmax_mass", "status"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with wandb.init(project=w.get("project", "dnnlab"), entity=w.get("entity"),
                            group=group, job_type="sweep_summary", name="summary",
                            dir=str(sweep_dir), mode=mode, reinit="finish_previous",
                            settings=wandb.Settings(console="off", x_disable_stats=True,
                                                    silent=True)) as run:
                run.log({"summary": wandb.Table(columns=cols, data=[
                    [str(r[c]) if c == "beta" else r[c] for c in cols]
                    for r in summary["jobs"]])})
                if (sweep_dir / "summary.png").exists():
                    run.log({"summary_plot": wandb.Image(str(sweep_dir / "summary.png"))})
                run.summary["failed_jobs"] = len(summary["failed"])
    except Exception as e:  # noqa: BLE001
        print(f"warning: W&B sweep summary not logged: {e}")
