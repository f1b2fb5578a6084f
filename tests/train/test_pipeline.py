"""pipelines.train end to end, as a user runs it: accuracy on digits with W&B offline read back
from its files, bad values as one line; (slow) determinism and kill -9 + resume, multiruns on
the joblib and submitit launchers with their summary, a failing job, faults."""
from __future__ import annotations

import json

import pytest
import torch

from dnnlab.core.beta import BETA_INF_FLOAT
from tests.conftest import kill_9_after_first_checkpoint
from tests.wandb_reader import find_runs, summarize

QUICK = ["trainer.progress=false"]


def _history(res: dict) -> list:
    """The per-epoch metrics without wall-clock ones (throughput)."""
    return [{k: v for k, v in h.items() if k != "images_per_s"} for h in res["history"]]


def _one_line(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_default_config_reaches_95_percent_on_digits(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("train", f"hydra.run.dir={out}", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["data"] == "digits" and res["model"] == "smoothmax_cnn" and res["beta"] == 4.0
    assert res["test_accuracy"] >= 0.95, res["test_accuracy"]
    assert len(res["history"]) == res["epochs"] == 10
    assert res["probe_max_rel_err"] < 1e-4  # hand-written grads vs autograd, float32
    assert 0 < res["grad_entropy"] < 1 and 0 < res["argmax_mass"] <= 1
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 9 and set(ck) >= {"model", "optimizer", "scheduler", "rng", "history"}
    (run,) = find_runs(out)
    w = summarize(run)
    assert w["run"].job_type == "train" and w["config"]["model"]["pool"]["beta"] == 4.0
    assert w["summary"]["test/accuracy"] == {"last": res["test_accuracy"]}
    epochs = [h for h in w["history"] if "val/accuracy" in h]
    assert len(epochs) == 10 and "pool/entropy_rel" in epochs[-1] and "epoch" in epochs[-1]
    assert any("probe/max_rel_err" in h for h in w["history"])
    assert any("test/accuracy" in h for h in w["history"])


@pytest.mark.parametrize("override,needle", [
    ("trainer.epochs=abc", "trainer.epochs: Value 'abc' of type 'str' could not be converted"),
    ("trainer.epochs=0", "trainer.epochs=0: must be >= 1"),
])
def test_bad_values_are_one_line(pipeline, tmp_path, override, needle):
    proc = pipeline("train", f"hydra.run.dir={tmp_path / 'r'}", override, "wandb.mode=disabled",
                    *QUICK)
    assert needle in _one_line(proc)


@pytest.mark.slow
@pytest.mark.parametrize("override,needle", [
    ("seed=abc", "seed: Value 'abc'"),
    ("trainer.epochs=-1", "trainer.epochs=-1: must be >= 1"),
    ("data.batch_size=12.5", "data.batch_size: Value '12.5' of type 'float'"),
    ("trainer.probe_every=-5", "trainer.probe_every=-5: must be >= 0"),
    ("data.batch_size=0", "data.batch_size=0: must be a positive int"),
    ("model.pool.beta=-1", "model.pool.beta=-1"),
    ("model=lenet5", "model=lenet5 cannot take data=digits images [1, 8, 8]: layer '3'"),
    ("data=nope", "data=nope: no such config"),
    ("data=mnist", "data=mnist: cannot load MNIST"),
    ("optimizer=sgd", "loss is nan"),
    ("optimizer.lr=-1", "optimizer (torch.optim.Adam): Invalid learning rate: -1"),
])
def test_more_bad_configs_and_nan_are_one_line(pipeline, tmp_path, override, needle):
    extra = ["data.dataset.download=false", f"paths.data_dir={tmp_path}"] if (
        "mnist" in override) else []
    extra += ["optimizer.lr=1e8"] if override == "optimizer=sgd" else []
    proc = pipeline("train", f"hydra.run.dir={tmp_path / 'r'}", "trainer.epochs=2",
                    "wandb.mode=disabled", *extra, *QUICK, override)  # the override last
    assert needle in _one_line(proc)


@pytest.mark.slow
def test_same_config_same_metrics_and_kill_resume_equals_uninterrupted(pipeline, tmp_path):
    args = QUICK + ["trainer.epochs=4", "wandb.mode=disabled"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert pipeline("train", f"hydra.run.dir={a}", *args).returncode == 0
    assert pipeline("train", f"hydra.run.dir={b}", *args).returncode == 0
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert _history(ra) == _history(rb) and ra["test_accuracy"] == rb["test_accuracy"]

    c = tmp_path / "c"
    kill_9_after_first_checkpoint(c, *args)
    done = torch.load(c / "checkpoint.pt", weights_only=True)["epoch"]
    assert done < 3
    resumed = pipeline("train", f"hydra.run.dir={c}", "trainer.resume=true", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rc = json.loads((c / "results.json").read_text())
    assert _history(rc) == _history(ra) and rc["test_accuracy"] == ra["test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "slurm_local"])  # joblib; submitit's local path
def test_multirun_two_wandb_runs_one_group_and_summary(pipeline, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = pipeline("train", f"hydra/launcher={launcher}", "model.pool.beta=2,inf",
                    "trainer.epochs=2", f"hydra.sweep.dir={sweep}", *QUICK, multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups, betas = set(), set()
    for job in ("0", "1"):
        (run,) = find_runs(sweep / job)
        w = summarize(run)
        groups.add(w["run"].run_group)
        betas.add(w["config"]["model"]["pool"]["beta"])
        assert w["run"].job_type == "train" and "test/accuracy" in w["summary"]
    assert len(groups) == 1 and betas == {2.0, BETA_INF_FLOAT}  # one float type
    summary = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in summary["jobs"]] == ["done", "done"]
    assert {str(r["beta"]) for r in summary["jobs"]} == {"2.0", "inf"}
    assert (sweep / "summary.png").stat().st_size > 1000
    (run,) = find_runs(sweep / "wandb")  # the group's summary table
    w = summarize(run)
    assert w["run"].job_type == "sweep_summary" and w["run"].run_group == groups.pop()


@pytest.mark.slow
def test_failing_job_is_reported_and_others_summarized(pipeline, tmp_path):
    sweep = tmp_path / "sweep"
    proc = pipeline("train", "model.pool.beta=inf,-1", "trainer.epochs=1", "wandb.mode=disabled",
                    f"hydra.sweep.dir={sweep}", *QUICK, multirun=True)
    assert proc.returncode != 0
    summary = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in summary["jobs"]] == ["done", "failed"]
    assert "model.pool.beta=-1" in summary["jobs"][1]["error"]
    assert summary["failed"] == [1]
    assert json.loads((sweep / "0" / "results.json").read_text())["test_accuracy"] > 0
