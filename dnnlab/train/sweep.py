"""The summary of a multirun of pipelines.train (a temperature sweep, say), read from the
sweep dir: one row per job with its overrides, beta, test accuracy, gradient entropy and
status (done, running, failed: a job's `failed.json`, written by dnnlab.runtime.SweepSummary).

dnnlab.runtime.SweepSummary (the Hydra callback) calls `write_summary` after every job, so a
failed or killed job never loses the others' results, and logs `summary_table` and
summary.png to W&B at the end of the multirun.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dnnlab.beta import LOG10_BETA_INF, log10_beta
from dnnlab.table import Table
from dnnlab.tracking import write_json
from dnnlab.train.plots import plot_temperature_sweep

COLUMNS = ["job", "beta", "log10_beta", "test_accuracy", "grad_entropy", "argmax_mass",
           "status"]
# the sweep summary's live W&B line plots, drawn from its table: (x, y, title)
LINES = [("log10_beta", "test_accuracy",
          f"test accuracy against log10(beta) (inf at {LOG10_BETA_INF:g})"),
         ("log10_beta", "grad_entropy", "gradient entropy / log n against log10(beta)")]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def collect(sweep_dir: Path) -> list[dict]:
    """One row per numbered job dir of the sweep, in job order."""
    rows = []
    jobs = sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))
    for job in jobs:
        ov = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(ov.read_text()) if ov.exists() else []
        res = _read_json(job / "results.json") or {}
        failed = _read_json(job / "failed.json")
        status = "failed" if failed else ("done" if "test_accuracy" in res else "running")
        rows.append({"job": int(job.name), "overrides": overrides or [], "beta": res.get("beta"),
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
