"""Pre-emption under the SLURM launcher's code path (hydra/launcher=slurm_local): SIGUSR2 to the
job process after its first checkpoint makes submitit requeue the job (the launcher's
`checkpoint` hook); the requeued job resumes (trainer.resume=auto) in its own run dir under the
same W&B run id and ends with the uninterrupted run's test accuracy."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_pipeline
from tests.wandb_reader import find_runs, summarize

ARGS = ["model.pool.beta=4", "trainer.epochs=8", "trainer.checkpoint_every=5",
        "trainer.progress=false"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_sigusr2_requeues_and_resumes_without_redoing_epochs(tmp_path):
    sweep, ref = tmp_path / "sweep", tmp_path / "ref"
    env = dict(os.environ, WANDB_SILENT="true", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", "-m",
                             "hydra/launcher=slurm_local", *ARGS, f"hydra.sweep.dir={sweep}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    job, deadline = sweep / "0", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (job / "checkpoint.pt").exists():
            pid = (job / ".lock").read_text().strip()  # RunLock: the job process's pid
            if pid:
                os.kill(int(pid), signal.SIGUSR2)  # what SLURM sends before pre-empting
                break
        time.sleep(0.05)
    else:
        pytest.fail("the job ended before its first checkpoint")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.err"))
    assert "Caught signal SIGUSR2" in logs and "preempted" in logs
    res = json.loads((job / "results.json").read_text())
    assert res["status"] == "done" and [h["epoch"] for h in res["history"]] == list(range(8))
    # resumed from the checkpoint: each step's loss once in metrics.jsonl, at most a
    # checkpoint interval of steps redone (metrics.discarded.jsonl): all 5 when the signal
    # lands after a step that ends an interval is logged and before its checkpoint is saved
    rows = _rows(job / "metrics.jsonl")
    steps = [r["trainer/global_step"] for r in rows if "train/loss" in r]
    assert steps == list(range(1, res["steps"] + 1))
    assert any("trainer/resumed_from_epoch" in r for r in rows)
    redone = [r for r in _rows(job / "metrics.discarded.jsonl") if "train/loss" in r]
    assert len(redone) <= 5
    runs = [summarize(f)["run"] for f in find_runs(job)]
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 1  # one W&B run, resumed
    # the uninterrupted run of the same config
    plain = run_pipeline("train", *ARGS, f"hydra.sweep.dir={ref}", multirun=True)
    assert plain.returncode == 0, plain.stderr[-3000:]
    want = json.loads((ref / "0" / "results.json").read_text())
    assert res["test_accuracy"] == want["test_accuracy"]
    assert [h["val_loss"] for h in res["history"]] == [h["val_loss"] for h in want["history"]]
