"""dnnlab.run.train_sweep: the multirun summary, from job dirs laid out as Hydra writes them
(`<job>/.hydra/overrides.yaml`, `results.json`, `failed.json`)."""
from __future__ import annotations

import json
import math

from dnnlab.core.beta import LOG10_BETA_INF
from dnnlab.core.table import Table
from dnnlab.run.train_sweep import (
    CHARTS,
    COLUMNS,
    collect,
    groups_table,
    summary_table,
    swept_keys,
    write_summary,
)


def _job(sweep, n, overrides, results=None, failed=None):
    d = sweep / str(n)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    if failed is not None:
        (d / "failed.json").write_text(json.dumps(failed))


def test_summary_of_done_failed_and_running_jobs(tmp_path, drawn):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["model.pool.beta=2"], {"beta": 2.0, "test_accuracy": 0.9,
                                           "grad_entropy": 0.6, "argmax_mass": 0.5})
    _job(sweep, 1, ["model.pool.beta=-1"], {"error": "model.pool.beta=-1: expected"},
         failed={"error": "ConfigError: model.pool.beta=-1: expected", "traceback": ""})
    _job(sweep, 2, ["model.pool.beta=inf"], {"beta": "inf", "history": []})
    _job(sweep, 10, ["model.pool.beta=8"], {"beta": 8.0, "test_accuracy": 0.95,
                                            "grad_entropy": 0.5, "argmax_mass": 0.6})
    (sweep / "wandb").mkdir()  # not a job
    rows = collect(sweep)
    assert [r["job"] for r in rows] == [0, 1, 2, 10]
    assert [r["status"] for r in rows] == ["done", "failed", "running", "done"]
    assert rows[0]["overrides"] == ["model.pool.beta=2"] and rows[0]["beta"] == 2.0
    assert rows[1]["error"].startswith("ConfigError: model.pool.beta=-1")
    summary = write_summary(sweep)
    assert summary["failed"] == [1] and summary["sweep_dir"] == str(sweep)
    assert json.loads((sweep / "summary.json").read_text())["jobs"][3]["test_accuracy"] == 0.95
    assert (sweep / "summary.png").is_file()
    [fig] = drawn()  # the done jobs only, by beta: 2 and 8
    acc, ent = fig.axes
    [line] = [ln for ln in acc.get_lines() if ln.get_linestyle() == "-"]
    assert list(line.get_xdata()) == [2.0, 8.0] and list(line.get_ydata()) == [0.9, 0.95]
    [line] = [ln for ln in ent.get_lines() if ln.get_linestyle() == "--"]
    assert list(line.get_ydata()) == [0.6, 0.5]
    t = summary_table(summary)
    assert isinstance(t, Table) and t.key == "summary" and t.columns == COLUMNS
    # ordered by beta (a failed or running job without a numeric beta last)
    assert [r[0] for r in t.rows] == [0, 10, 2, 1]
    assert t.rows[0] == [0, "2.0", math.log10(2.0), None, 0.9, None, 0.6, 0.5, "done"]
    assert t.rows[2][1:3] == ["inf", LOG10_BETA_INF] and t.rows[3][2] is None


def test_swept_keys_from_the_jobs_overrides():
    jobs = [{"overrides": ["model.pool.beta=2", "trainer.epochs=3"]},
            {"overrides": ["model.pool.beta=inf", "trainer.epochs=3"]},
            {"overrides": ["model.pool.beta=8", "trainer.epochs=3", "seed=1"]}]
    assert swept_keys(jobs) == {"model.pool.beta": ["2", "inf", "8"], "seed": ["1"],
                                "fixed": {"trainer.epochs": "3"}}
    assert swept_keys([]) == {}
    assert {y for y, _ in CHARTS} <= set(COLUMNS)


def test_empty_sweep(tmp_path):
    summary = write_summary(tmp_path)
    assert summary["jobs"] == [] and not (tmp_path / "summary.png").exists()
    assert (tmp_path / "summary.json").exists() and summary_table(summary).rows == []


def test_replicated_sweep_groups_by_beta_with_intervals(tmp_path, drawn):
    """A 2 x 3 sweep (beta=2,inf seed=0,1,2): one group per beta with n = 3, the Student-t
    interval of its three values, the seed column, Welch's test between the two betas, and a
    plot with error bars."""
    sweep = tmp_path / "sweep"
    acc = {"2": [0.90, 0.92, 0.94], "inf": [0.97, 0.98, 0.99]}
    n = 0
    for beta in ("2", "inf"):
        for seed in range(3):
            _job(sweep, n, [f"model.pool.beta={beta}", f"seed={seed}"],
                 {"beta": 2.0 if beta == "2" else "inf", "seed": seed,
                  "test_accuracy": acc[beta][seed], "best_val_accuracy": acc[beta][seed] - 0.01,
                  "grad_entropy": 0.5 if beta == "2" else 0.1, "argmax_mass": 0.6})
            n += 1
    summary = write_summary(sweep)
    g2, ginf = summary["groups"]
    assert g2["key"] == {"model.pool.beta": 2} and ginf["key"] == {"model.pool.beta": "inf"}
    assert g2["n"] == ginf["n"] == 3 and g2["seeds"] == [0, 1, 2] and g2["jobs"] == [0, 1, 2]
    m = g2["metrics"]["test_accuracy"]
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df 2), table value; std 0.02
    assert math.isclose(m["mean"], 0.92) and math.isclose(m["std"], 0.02)
    assert math.isclose(m["ci95"][0], 0.92 - half) and math.isclose(m["ci95"][1], 0.92 + half)
    assert g2["metrics"]["grad_entropy"]["ci95"] == [0.5, 0.5]  # no spread: the mean itself
    (cmp,) = [c for c in summary["comparisons"] if c["metric"] == "test_accuracy"]
    assert cmp["from"] == g2["key"] and cmp["to"] == ginf["key"]
    assert cmp["axis"] == "model.pool.beta"
    assert math.isclose(cmp["diff"], 0.06) and cmp["p"] < 0.05 and cmp["significant"] is True
    assert json.loads((sweep / "summary.json").read_text())["groups"][0]["n"] == 3
    assert (sweep / "summary.png").is_file()
    [fig] = drawn()  # each seed a dot; the means of each beta joined, with their intervals
    ax = fig.axes[0]
    [seeds] = [ln for ln in ax.get_lines() if ln.get_marker() == "."]
    assert sorted(seeds.get_ydata()) == acc["2"] + acc["inf"]
    [means] = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert list(means.get_xdata()) == [2.0, 8.0]  # inf at 4x the largest finite beta
    assert list(means.get_ydata()) == [m["mean"], ginf["metrics"]["test_accuracy"]["mean"]]
    [bars] = [c for c in ax.collections if len(c.get_segments()) == 2]  # the error bars
    assert [seg[:, 1].tolist() for seg in bars.get_segments()][0] == m["ci95"]
    t = summary_table(summary)
    assert [r[COLUMNS.index("seed")] for r in t.rows] == [0, 1, 2, 0, 1, 2]
    gt = groups_table(summary)
    assert gt.columns[:4] == ["model.pool.beta", "log10_beta", "n", "seeds"]
    assert [r[2] for r in gt.rows] == [3, 3] and gt.rows[1][-1] is True and gt.rows[0][-1] is None
