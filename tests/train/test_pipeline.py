"""pipelines.train end to end, as a user runs it: accuracy on digits with W&B offline read back
from its files, bad values as one line; (slow) determinism and kill -9 + resume, multiruns on
the joblib and submitit launchers with their summary, a failing job, faults.

Runs a user can trust: the learnable temperature from the command line, resume that cannot lose
data, unique readable run dirs, clean interrupts, the same metrics under every launcher, offline
data errors, unwritable outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from dnnlab.core.beta import BETA_INF_FLOAT
from dnnlab.opcount import count_ops
from dnnlab.train.model import SmoothMaxCNN
from tests.conftest import ROOT, is_png, kill_9_after_first_checkpoint
from tests.wandb_reader import find_runs, read_records, summarize

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
    assert is_png(sweep / "summary.png")
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


def _only_stderr_line(proc) -> str:
    """The one line on stderr, whatever the exit status (_one_line: a failure's)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _files(d) -> dict:
    """{relative path: bytes} of every file under d except W&B's and the log."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and "wandb" not in p.parts and p.suffix != ".log"}


# ------------------------------------------------------------------------ 1. learnable beta
@pytest.mark.slow
def test_learnable_beta_readme_command_moves_beta(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("train", "model.pool.learnable=true", "trainer.epochs=3",
                    f"hydra.run.dir={out}", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["beta"] == "learnable"
    assert set(res["betas"]) == {"features.4", "features.7"}
    assert all(abs(b - 4.0) > 1e-3 for b in res["betas"].values()), res["betas"]  # it moved
    (run,) = find_runs(out)
    epochs = [h for h in summarize(run)["history"] if "val/accuracy" in h]
    assert len(epochs) == 3
    for layer in ("features.4", "features.7"):  # beta per pooling layer per epoch
        seen = [h[f"pool/{layer}/beta"] for h in epochs]
        assert seen[-1] == pytest.approx(res["betas"][layer]) and len(set(seen)) == 3


def test_learnable_beta_counts_like_a_fixed_one():
    fixed = count_ops(SmoothMaxCNN(1, 10, (16, 32, 32), beta=4.0, normalized=True), [1, 1, 8, 8])
    learn = SmoothMaxCNN(1, 10, (16, 32, 32), beta=4.0, learnable=True, normalized=True)
    counted = count_ops(learn, [1, 1, 8, 8])
    assert [(r.path, r.macs) for r in counted.layers] == [(r.path, r.macs) for r in fixed.layers]
    assert learn.features[4].log_beta.device.type == "cpu"  # the model is left as it was


# ------------------------------------------------------------------------ 2. resume
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (W&B disabled), copied by each test that changes it."""
    from tests.conftest import run_pipeline

    out = tmp_path_factory.mktemp("resume") / "run"
    proc = run_pipeline("train", "trainer.epochs=2", "wandb.mode=disabled",
                        f"hydra.run.dir={out}", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def test_resume_of_a_finished_run_changes_nothing(pipeline, finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = _files(run)
    proc = pipeline("train", "trainer.epochs=2", "trainer.resume=true", "wandb.mode=disabled",
                    f"hydra.run.dir={run}", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout and "nothing changed" in proc.stdout
    assert _files(run) == before


@pytest.mark.parametrize("change,needle,switch", [
    ("model.pool.beta=inf", "model.pool.beta: 4.0 in the checkpoint, inf now", "true"),
    ("model.pool.beta=inf", "model.pool.beta: 4.0 in the checkpoint, inf now", "auto"),
    pytest.param("model.builder.channels=[8,8,8]",
                 "model.builder.channels: [16, 32, 32] in the checkpoint", "true",
                 marks=pytest.mark.slow),
])
def test_resume_with_another_config_is_refused_and_writes_nothing(pipeline, finished, tmp_path,
                                                                  change, needle, switch):
    """trainer.resume=true, and auto (the default) too: a run dir's checkpoint of another
    config is never overwritten."""
    run = _copy(finished, tmp_path)
    before = _files(run)
    proc = pipeline("train", "trainer.epochs=3", f"trainer.resume={switch}", change,
                    "wandb.mode=disabled", f"hydra.run.dir={run}", *QUICK)
    assert proc.returncode == 1
    line = _only_stderr_line(proc)
    assert f"trainer.resume={switch} refused" in line and needle in line, line
    assert _files(run) == before  # .hydra/overrides.yaml and results.json included


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_or_names_the_file(pipeline, finished, tmp_path):
    run = _copy(finished, tmp_path)
    ck = run / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    proc = pipeline("train", "trainer.epochs=2", "trainer.resume=true", "wandb.mode=disabled",
                    f"hydra.run.dir={run}", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert f"{ck} is unreadable" in proc.stdout and "checkpoint.prev.pt" in proc.stdout
    res = json.loads((run / "results.json").read_text())
    assert len(res["history"]) == 2 and res["grad_entropy"] is not None
    assert res["test_accuracy"] == json.loads((finished / "results.json").read_text())[
        "test_accuracy"]  # the last epoch retrained from the previous checkpoint, same result
    # both bad: one line naming them, results.json untouched
    for p in (run / "checkpoint.pt", run / "checkpoint.prev.pt"):
        p.write_bytes(b"not a checkpoint")
    before = _files(run)
    proc = pipeline("train", "trainer.epochs=3", "trainer.resume=true", "wandb.mode=disabled",
                    f"hydra.run.dir={run}", *QUICK)
    line = _only_stderr_line(proc)
    assert proc.returncode == 1 and "checkpoint.prev.pt is unreadable" in line, line
    assert _files(run) == before


# ------------------------------------------------------------------------ 3. run dirs
def test_config_error_leaves_no_run_dir_and_no_wandb_run(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("train", "trainer.device=cuda:99" if not torch.cuda.is_available() else
                    "model.builder.channels=[1,2]", f"hydra.run.dir={out}", *QUICK)
    assert proc.returncode == 1
    _only_stderr_line(proc)
    assert not out.exists()


@pytest.mark.slow
def test_two_runs_in_the_same_second_get_their_own_readable_dirs(tmp_path):
    env = dict(os.environ, WANDB_SILENT="true", PYTHONWARNINGS="ignore")
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", "pipelines.train", "trainer.epochs=1", "wandb.mode=disabled",
           "trainer.probe_every=0", *QUICK]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    dirs = []
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
        dirs.append(ROOT / o.strip().rsplit("results: ", 1)[1].rsplit("/", 1)[0])
    try:
        assert dirs[0] != dirs[1]
        assert all(d.name.endswith("_trainer.epochs=1,trainer.probe_every=0") for d in dirs)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------ 4. interrupts
@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_is_one_line_exit_code_and_resumable(tmp_path, sig, code):
    out = tmp_path / "run"
    env = dict(os.environ, WANDB_SILENT="true", PYTHONWARNINGS="ignore")
    env.pop("WANDB_MODE", None)
    args = ["trainer.epochs=40", f"hydra.run.dir={out}", *QUICK]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res = out / "results.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (
            res.exists() and len(json.loads(res.read_text()).get("history", [])) >= 1):
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("interrupted at epoch ") and f"checkpoint {out}" in lines[0]
    command = lines[0].split("resume with: ", 1)[1]
    assert "trainer.resume=true" in command and f"hydra.run.dir={out}" in command
    done = json.loads(res.read_text())
    assert done["status"] == "interrupted" and len(done["history"]) >= 1
    (run,) = find_runs(out)
    exits = [r.exit.exit_code for r in read_records(run) if r.WhichOneof("record_type") == "exit"]
    assert exits == [code] and summarize(run)["summary"]["status"] == "interrupted"
    # the printed command resumes it (fewer epochs so that it ends now: it has finished them)
    resumed = subprocess.run(command.replace("python", sys.executable, 1).split()
                             + ["trainer.epochs=" + str(len(done["history"]))], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_multirun_failed_jobs_one_line_each(pipeline, tmp_path):
    sweep = tmp_path / "sweep"
    proc = pipeline("train", "model.pool.beta=4,-1,0", "trainer.epochs=1", "wandb.mode=disabled",
                    f"hydra.sweep.dir={sweep}", *QUICK, multirun=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and "job 1 " in errors[0] and "job 2 " in errors[1], proc.stderr
    assert json.loads((sweep / "0" / "results.json").read_text())["test_accuracy"] > 0


# ------------------------------------------------------------------------ 5. launchers
@pytest.mark.slow
def test_serial_and_joblib_give_the_same_metrics(pipeline, tmp_path):
    def run(launcher):
        sweep = tmp_path / launcher
        proc = pipeline("train", f"hydra/launcher={launcher}", "model.pool.beta=4,inf",
                        "trainer.epochs=2", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}",
                        *QUICK, multirun=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = []
        for j in (0, 1):
            r = json.loads((sweep / str(j) / "results.json").read_text())
            out.append([{k: v for k, v in h.items() if k != "images_per_s"}
                        for h in r["history"]] + [r["test_accuracy"], r["test_loss"]])
        return out

    assert run("basic") == run("local")


# ------------------------------------------------------------------------ 6. offline data
def test_offline_data_error_names_the_files_and_leaves_no_dirs(tmp_path):
    from dnnlab.core.errors import ConfigError
    from dnnlab.train.data import cifar10, mnist

    root = tmp_path / "data"
    with pytest.raises(ConfigError) as e:
        mnist(root=str(root), download=False)
    assert f"t10k-labels-idx1-ubyte in {root / 'MNIST' / 'raw'}" in str(e.value)
    with pytest.raises(ConfigError) as e:
        cifar10(root=str(root), download=False)
    assert f"batches.meta in {root / 'cifar-10-batches-py'}" in str(e.value)
    assert "data_batch_5" in str(e.value)
    assert not root.exists()  # torchvision's empty dirs are removed


# ------------------------------------------------------------------------ 7. unwritable
@pytest.mark.slow  # 17 s
def test_unwritable_outputs_are_one_line(pipeline, tmp_path):
    proc = pipeline("train", "hydra.run.dir=/proc/dnnlab-run", "trainer.epochs=1", *QUICK)
    assert proc.returncode == 1 and "/proc/dnnlab-run" in _only_stderr_line(proc)
    out = tmp_path / "run"  # a run to resume, whose results.json then cannot be written (a
    # run that starts over would set the blocking dir aside with the rest: runtime.set_aside)
    first = pipeline("train", f"hydra.run.dir={out}", "trainer.epochs=1", "wandb.mode=disabled",
                     "trainer.limit_batches=2", *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    (out / "results.json").unlink()
    (out / "results.json").mkdir()
    proc = pipeline("train", f"hydra.run.dir={out}", "trainer.epochs=2", "wandb.mode=disabled",
                    "trainer.limit_batches=2", *QUICK)
    line = _only_stderr_line(proc)
    assert proc.returncode == 1 and f"cannot write {out / 'results.json'}" in line, line
    assert not (out / "results.json.tmp").exists()
