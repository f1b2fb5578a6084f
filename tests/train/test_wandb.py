"""What a W&B user sees of pipelines.train (docs/wandb.md), read back from the offline `.wandb`
files: a default run as a dashboard, one run across kill -9 and resume, a temperature sweep and
its summary run."""
from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest

from dnnlab.core.beta import BETA_INF_FLOAT, LOG10_BETA_INF
from tests.conftest import kill_9_after_first_checkpoint, run_pipeline
from tests.wandb_reader import find_runs, summarize

QUICK = ["trainer.progress=false"]
MEDIA = ("/_type", "/path", "/sha256", "/size", "/ncols", "/nrows", "/log_mode", "/format",
         "/artifact_path", "/_latest_artifact_path", "/height", "/width")


def _names(d: dict) -> set[str]:
    """The quantities of a history row or summary: no W&B internals, a table or image once."""
    out = set()
    for k in d:
        if k.startswith("_"):
            continue
        media = next((m for m in MEDIA if k.endswith(m)), None)
        out.add(k[: -len(media)] if media else k)
    return out


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    proc = run_pipeline("train", f"hydra.run.dir={out}", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_default_run_is_a_dashboard(default_run):
    out = default_run
    res = json.loads((out / "results.json").read_text())
    (run,) = find_runs(out)
    w = summarize(run)
    assert w["exit"] == 0 and w["run"].display_name == "train-smoothmax_cnn-beta4"
    assert {"train", "smoothmax_cnn"} <= set(w["run"].tags)
    stored = json.loads((out / "wandb_run.json").read_text())
    assert stored["id"] == w["run"].run_id and stored["name"] == w["run"].display_name
    # a row per training step for the loss and the learning rate, on the global step axis
    steps = [h["trainer/global_step"] for h in w["history"] if "train/loss" in h]
    assert steps == list(range(1, res["steps"] + 1)) and res["steps"] >= 100
    assert all("train/lr" in h for h in w["history"] if "train/loss" in h)
    assert [h["epoch"] for h in w["history"] if "val/accuracy" in h] == list(range(10))
    m = w["metrics"]
    assert m["train/loss"].step_metric == m["probe/*"].step_metric == "trainer/global_step"
    for key in ("val/accuracy", "val/loss", "train/loss_epoch", "train/accuracy", "pool/*",
                "test/*"):
        assert m[key].step_metric == "epoch", key
    assert m["val/accuracy"].summary.max and m["train/loss"].summary.min
    assert w["summary"]["val/accuracy"] == {"max": max(h["val_accuracy"] for h in res["history"])}
    # one name per quantity: no epoch/ copies, no test_accuracy beside test/accuracy, no
    # per-layer probe panels, no constant beta panels
    names = set().union(*(_names(h) for h in w["history"])) | _names(w["summary"])
    flat = [k.replace("/", "_").replace(".", "_") for k in names]
    assert len(set(flat)) == len(flat), sorted(names)
    assert not [k for k in names if k.startswith("epoch/") or k.endswith("/beta")]
    assert {k for k in names if k.startswith("probe/")} == {"probe/max_abs_err",
                                                            "probe/max_rel_err"}
    assert {"test/accuracy", "probes"} <= names and "test_accuracy" not in names
    assert not [k for k in names if k.startswith(("gradients/", "parameters/"))]  # watch: null
    assert w["summary"]["beta"] == 4.0 and w["config"]["log10_beta"] == math.log10(4.0)
    # artifacts: the model (best and latest, with the resolved config) and the results
    models = {tuple(a.aliases): a for a in w["artifacts"] if a.type == "model"}
    best = next(a for k, a in models.items() if "best" in k)
    latest = [a for k, a in models.items() if "best" not in k]
    assert [c.path for c in best.manifest.contents] == ["model.best.pt"]
    assert [c.path for a in latest for c in a.manifest.contents] == ["checkpoint.pt"]
    assert json.loads(best.metadata)["config"]["model"]["pool"]["beta"] == 4.0
    assert all(a.name == f"model-{w['run'].run_id}" for a in models.values())
    (results,) = [a for a in w["artifacts"] if a.type == "results"]
    assert {"results.json", "metrics.jsonl", "probes.csv"} <= {
        c.path for c in results.manifest.contents}


def test_metrics_jsonl_holds_what_went_to_wandb(default_run):
    (run,) = find_runs(default_run)
    history = summarize(run)["history"]
    local, media = defaultdict(dict), set()
    for line in (default_run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "_step" in row:
            local[row.pop("_step")].update(row)
        else:  # a table or an image: W&B holds the file
            media |= {k for k, v in row.items() if isinstance(v, dict) and "_type" in v}
    assert media == {"probes"}
    assert sorted(local) == [h["_step"] for h in history]
    for h in history:
        scalars = {k: v for k, v in h.items() if not k.startswith("_")
                   and k.split("/")[0] not in media}
        assert scalars == local[h["_step"]], h["_step"]


@pytest.mark.slow  # 16 s in a subprocess: the fast suite keeps its 10 minutes
def test_kill_9_and_resume_is_one_run_with_every_epoch(tmp_path):
    out = tmp_path / "run"
    args = [f"hydra.run.dir={out}", "trainer.epochs=3", *QUICK]
    kill_9_after_first_checkpoint(out, *args[1:])
    resumed = run_pipeline("train", *args, "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    # the killed run's file: a header, or not even that when wandb had not written it yet
    runs = [summarize(f) for f in find_runs(out)]
    assert len(runs) in (1, 2) and len(list(out.glob("wandb/offline-run-*"))) == 2
    assert len({w["run"].run_id for w in runs if w["run"] is not None}) == 1
    (final,) = [w for w in runs if w["exit"] == 0]
    epochs = [h["epoch"] for h in final["history"] if "val/accuracy" in h]
    assert epochs == [0, 1, 2]
    steps = [h["_step"] for h in final["history"] if "train/loss" in h]
    assert steps == list(range(1, res["steps"] + 1))  # every step once, its own number
    local = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["_step"] for r in local if "train/loss" in r] == steps
    assert [h["val_accuracy"] for h in res["history"]] == [
        h["val/accuracy"] for h in final["history"] if "val/accuracy" in h]


@pytest.mark.slow  # a subprocess run of 13-18 s: make test stays under 10 min
def test_temperature_sweep_and_its_summary_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_pipeline("train", "experiment=temperature_sweep", "model.pool.beta=2,inf",
                        "seed=0", "trainer.epochs=1", f"hydra.sweep.dir={sweep}", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [summarize(find_runs(sweep / j)[0]) for j in ("0", "1")]
    assert [w["run"].display_name for w in jobs] == [
        "train-smoothmax_cnn-beta2-seed=0,epochs=1", "train-smoothmax_cnn-betainf-seed=0,epochs=1"]
    assert all("temperature_sweep" in w["run"].tags and w["exit"] == 0 for w in jobs)
    inf = jobs[1]
    # one float type per key in every run (docs/wandb.md): inf as 10 ** LOG10_BETA_INF
    for w, beta in zip(jobs, (2.0, BETA_INF_FLOAT)):
        for got in (w["config"]["model"]["pool"]["beta"], w["config"]["model"]["builder"]["beta"],
                    w["config"]["beta"], w["summary"]["beta"]):
            assert type(got) is float and got == beta
    assert inf["config"]["log10_beta"] == LOG10_BETA_INF and jobs[0]["config"]["seed"] == 0
    assert "Infinity" not in json.dumps(inf["config"]) + json.dumps(inf["summary"])
    (run,) = find_runs(sweep / "wandb")
    w = summarize(run)
    assert w["run"].job_type == "sweep_summary" and w["run"].run_group == jobs[0]["run"].run_group
    assert {"temperature_sweep", "sweep_summary", "train"} <= set(w["run"].tags)
    assert w["config"]["sweep"]["model.pool.beta"] == ["2", "inf"] and w["config"]["jobs"] == 2
    names = set().union(*(_names(h) for h in w["history"]))
    assert {"summary", "groups", "summary_plot", "test_accuracy_mean_vs_log10_beta_table",
            "grad_entropy_mean_vs_log10_beta_table"} <= names
    plots = {k for k in w["config"] if k.startswith("_wandb/visualize/")}
    assert plots == {"_wandb/visualize/test_accuracy_mean_vs_log10_beta",
                     "_wandb/visualize/grad_entropy_mean_vs_log10_beta"}


@pytest.mark.slow  # 13 s in a subprocess: the fast suite keeps its 10 minutes
def test_watch_logs_gradient_histograms_and_a_bad_value_is_one_line(tmp_path):
    out = tmp_path / "run"
    proc = run_pipeline("train", f"hydra.run.dir={out}", "trainer.epochs=1",
                        "wandb.watch.log=gradients", "wandb.watch.log_freq=5", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = find_runs(out)
    names = set().union(*(_names(h) for h in summarize(run)["history"]))
    assert "gradients/features.0.weight" in names and "gradients/head.bias" in names
    assert not [k for k in names if k.startswith("parameters/")]
    bad = run_pipeline("train", f"hydra.run.dir={tmp_path / 'bad'}", "wandb.watch.log=weights",
                       *QUICK)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1, bad.stderr
    assert "wandb.watch.log='weights': expected gradients, parameters, all or null" in lines[0]
