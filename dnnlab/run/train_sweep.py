"""The summary of a multirun of pipelines.train (a temperature sweep, say), read from the
sweep dir: one row per job with its overrides, beta, seed, accuracies, gradient entropy and
status (done, running, pruned by a search, failed: a job's `failed.json`); the groups of
replicates (jobs equal in every swept key but the seed, dnnlab.train.groups) with their
means and 95% intervals; and Welch's t-test between groups adjacent in beta.

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

from dnnlab.core.beta import LOG10_BETA_INF, log10_beta
from dnnlab.core.distributed import World
from dnnlab.core.jsonio import read_json, write_json
from dnnlab.core.table import Table
from dnnlab.run.cli import err_console
from dnnlab.run.config import settings_of
from dnnlab.run.naming import run_tags
from dnnlab.run.results import Results
from dnnlab.run.settings import WandbConfig
from dnnlab.run.sweep_dir import FAILED, job_dirs, read_overrides
from dnnlab.run.tracking import Tracker

# scipy (dnnlab.train.groups) and matplotlib (dnnlab.train.plots) are imported where used: Hydra
# makes this callback for every run of pipelines.train, a single one too
SEARCH = "optimization_results.yaml"  # experiment=search's record (hydra_plugins/dnnlab_search)
COLUMNS = ["job", "beta", "log10_beta", "seed", "test_accuracy", "best_val_accuracy",
           "grad_entropy", "argmax_mass", "status"]
# the sweep summary's live W&B charts of the groups' means with their 95% intervals: (y, title)
CHARTS = [("test_accuracy", f"test accuracy (mean, 95% CI) against log10(beta) "
           f"(inf at {LOG10_BETA_INF:g})"),
          ("grad_entropy", "gradient entropy / log n (mean, 95% CI) against log10(beta)")]


def collect(sweep_dir: Path) -> list[dict]:
    """One row per numbered job dir of the sweep, in job order."""
    rows = []
    for job in job_dirs(Path(sweep_dir)):
        res = Results.read(job)
        failed = read_json(job / FAILED)
        status = "failed" if failed else "pruned" if res.get("status") == "pruned" else (
            "done" if "test_accuracy" in res else "running")
        overrides = read_overrides(job)
        rows.append({"job": int(job.name), "overrides": overrides,
                     "beta": res.get("beta"),
                     "betas": res.get("betas") or {},
                     "seed": res.get("seed", _seed_of(overrides)),
                     "test_accuracy": res.get("test_accuracy"),
                     "best_val_accuracy": res.get("best_val_accuracy"),
                     "grad_entropy": res.get("grad_entropy"),
                     "argmax_mass": res.get("argmax_mass"), "status": status,
                     "error": (failed or {}).get("error") or res.get("error")})
    return rows


def _seed_of(overrides: list[str]) -> int | None:
    seeds = [o.partition("=")[2] for o in overrides if o.lstrip("+~").startswith("seed=")]
    return int(seeds[-1]) if seeds and seeds[-1].lstrip("-").isdigit() else None


def write_summary(sweep_dir: Path) -> dict:
    """Rewrite <sweep_dir>/summary.json (and summary.png when a job is done); the summary:
    `jobs`, `failed`, `groups` (dnnlab.train.groups.group_jobs) and `comparisons` (Welch's
    t-test of adjacent groups)."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    from dnnlab.train.groups import compare_adjacent, group_jobs  # scipy: when a job ends
    from dnnlab.train.plots import plot_temperature_sweep  # matplotlib

    groups = group_jobs(rows)
    summary = {"sweep_dir": str(sweep_dir), "jobs": rows,
               "failed": [r["job"] for r in rows if r["status"] == "failed"],
               "groups": groups, "comparisons": compare_adjacent(groups, rows)}
    write_json(sweep_dir / "summary.json", summary)
    plot_temperature_sweep(rows, sweep_dir / "summary.png", groups)
    return summary


def summary_table(summary: dict) -> Table:
    """The jobs of a summary as a Table, ordered by beta, with a numeric `log10_beta`
    (dnnlab.core.beta.log10_beta) for W&B's line plots; beta as text: a number, "inf", or for a
    learnable beta "learnable" and each pooling layer's final value: "learnable (5.02, 4.93)".
    """

    def cell(r: dict, c: str) -> Any:
        if c == "beta":
            return _beta_text(r)
        if c == "log10_beta":
            return log10_beta(r["beta"])
        return r.get(c)

    jobs = sorted(summary["jobs"], key=lambda r: (log10_beta(r["beta"]) is None,
                                                  log10_beta(r["beta"]) or 0.0,
                                                  r.get("seed") or 0, r["job"]))
    rows = [[cell(r, c) for c in COLUMNS] for r in jobs]
    return Table("summary", COLUMNS, rows, title=f"sweep {summary['sweep_dir']} (by beta; "
                 f"log10_beta places inf at {LOG10_BETA_INF:g})")


def swept_keys(jobs: list[dict]) -> dict[str, list]:
    """{key: [its value in each job, in job order]} for the overrides whose values differ
    between the jobs (the sweep's own keys), then {key: value} under "fixed" for those every
    job shares."""
    from dnnlab.train.groups import override_values, swept

    values, keys = override_values(jobs), swept(jobs)
    swept_ = {k: values[k] for k in keys}
    fixed = {k: v[0] for k, v in values.items() if k not in swept_}
    return swept_ | ({"fixed": fixed} if fixed else {})


def _beta_text(row: dict) -> str:
    if row["beta"] == "learnable" and row.get("betas"):
        return f"learnable ({', '.join(f'{v:.3g}' for v in row['betas'].values())})"
    return str(row["beta"])


def groups_table(summary: dict, metric: str = "test_accuracy") -> Table:
    """The groups as a Table ordered by beta: the swept keys but the seed, `log10_beta` when
    beta is swept, n, the seeds, each metric's mean and 95% interval, and for `metric` Welch's
    p-value against the previous group along the axis and whether it is significant at 0.05."""
    from dnnlab.train.groups import METRICS

    groups = summary.get("groups") or []
    keys = list(groups[0]["key"]) if groups else []
    beta = "model.pool.beta" in keys
    prev = {repr(c["to"]): c for c in summary.get("comparisons") or [] if c["metric"] == metric}
    cols = keys + (["log10_beta"] if beta else []) + ["n", "seeds"]
    for m in METRICS:
        cols += [f"{m}_mean", f"{m}_ci95_lo", f"{m}_ci95_hi"]
    cols += [f"{metric}_diff_vs_prev", f"{metric}_p_vs_prev", "significant"]
    rows = []
    for g in sorted(groups, key=lambda g: (log10_beta(g["key"].get("model.pool.beta")) or 0.0)
                    if beta else 0.0):
        row = [g["key"][k] for k in keys] + ([log10_beta(g["key"]["model.pool.beta"])]
                                             if beta else []) + [g["n"], _seeds(g["seeds"])]
        for m in METRICS:
            st = g["metrics"].get(m) or {}
            ci = st.get("ci95") or [None, None]
            row += [st.get("mean"), *ci]
        c = prev.get(repr(g["key"])) or {}
        row += [c.get("diff"), c.get("p"), c.get("significant")]
        rows.append(row)
    return Table("groups", cols, rows, title=f"sweep {summary['sweep_dir']}: groups of seeds "
                 "(mean and Student-t 95% interval; Welch's t-test against the previous group)",
                 formats={c: "{:.4f}" for c in cols if c.endswith(("_mean", "_lo", "_hi",
                                                                   "_prev"))})


def _seeds(seeds: list) -> str:
    return ",".join("?" if s is None else str(s) for s in seeds)


def log_summary_run(wandb: WandbConfig, sweep_dir: Path, group: str, summary: dict,
                    experiment: str | None = None) -> None:
    """The sweep's summary as its own W&B run in the sweep's group: config = the swept keys and
    their values; the jobs table, the groups table, a chart per CHARTS of the groups' means
    with their intervals, the plot, the number of failed jobs; for experiment=search its trials
    table, best trial and parameter importances (read_search)."""
    if wandb.mode == "disabled":
        return
    table, groups = summary_table(summary), groups_table(summary)
    config = {"sweep": swept_keys(summary["jobs"]), "sweep_dir": str(sweep_dir),
              "jobs": len(table.rows), "groups": len(groups.rows), "pipeline": "train"}
    tags = run_tags(wandb.run_name, "train", {}, wandb.tags, None,
                    *([experiment] if experiment else []), "sweep_summary")
    with Tracker(wandb, sweep_dir, job_type="sweep_summary", name=f"{group}-summary",
                 config=config, tags=tags, group=group) as tr:
        tr.table(table)
        tr.table(groups)
        if "log10_beta" in groups.columns:
            x = [r[groups.columns.index("log10_beta")] for r in groups.rows]
            for m, title in CHARTS:
                ys = [[r[groups.columns.index(f"{m}_{part}")] for r in groups.rows]
                      for part in ("mean", "ci95_lo", "ci95_hi")]
                tr.lines(f"{m}_mean_vs_log10_beta", x, ys, ["mean", "95% CI low",
                                                            "95% CI high"], title, "log10_beta")
        if (sweep_dir / "summary.png").exists():
            tr.image("summary_plot", sweep_dir / "summary.png")
        search = read_search(sweep_dir)
        if search is not None:
            log_search(tr, search)
        tr.summary(failed_jobs=len(summary["failed"]),
                   significant_steps=sum(bool(c["significant"]) for c in
                                         summary.get("comparisons") or []
                                         if c["metric"] == "test_accuracy"))


def read_search(sweep_dir: Path) -> dict | None:
    """The record experiment=search leaves in its sweep dir (optimization_results.yaml, with
    its `trials`), or None."""
    import yaml

    path = Path(sweep_dir) / SEARCH
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) and "trials" in data else None


def search_tables(search: dict) -> tuple[Table, Table | None]:
    """The trials (number, job, state, each parameter, value, the epoch a pruned trial stopped
    after) and the parameter importances (None when the search had too few complete trials)."""
    trials = search["trials"]
    keys = list(dict.fromkeys(k for t in trials for k in t.get("params") or {}))
    cols = ["trial", "job", "state", *keys, "value", "pruned_at_epoch"]
    rows = [[t["number"], t.get("job"), t["state"], *[(t.get("params") or {}).get(k)
                                                      for k in keys],
             t.get("value"), t.get("pruned_at_epoch")] for t in trials]
    table = Table("trials", cols, rows, title=f"search {search.get('study_name')}: its trials")
    imp = search.get("importances")
    return table, (Table("importances", ["param", "importance"], [[k, v] for k, v in
                                                                  imp.items()],
                         title="Optuna's parameter importances (fANOVA)") if imp else None)


def log_search(tr: Tracker, search: dict) -> None:
    """A search's trials table, best trial and parameter importances, to the summary run."""
    trials, imp = search_tables(search)
    tr.table(trials)
    if imp is not None:
        tr.table(imp)
    tr.summary(best_trial=search.get("best_trial"), best_value=search.get("best_value"),
               best_params=search.get("best_params"), trial_states=search.get("states"),
               **{f"importance/{k}": v for k, v in (search.get("importances") or {}).items()},
               **({"importances_note": search["importances_note"]}
                  if search.get("importances_note") else {}))


class SweepSummary(Callback):
    """Hydra callback of a train multirun (conf/train.yaml `hydra.callbacks`): summary.json
    and summary.png after every job; the summary run at the end (none for an empty sweep)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if str(OmegaConf.select(config, "hydra.mode")) not in ("RunMode.MULTIRUN", "MULTIRUN"):
            return
        if not World.from_env().is_main:  # a job of several processes: rank 0 summarizes
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
            err_console.print(f"warning: sweep summary failed: {e}", highlight=False,
                              soft_wrap=True)

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
            err_console.print(f"warning: W&B sweep summary not logged: {e}", highlight=False,
                              soft_wrap=True)
