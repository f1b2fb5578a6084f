"""What a user sees while long commands run with no progress bar: `make run`'s training section
prints a line per training (`train 3/4: beta=inf seed=0 (5 s) test 0.912`), and each job of a
multirun with trainer.progress=false ends with a line that names it (joblib's workers print in
any order)."""
from __future__ import annotations

import re

import pytest

QUICK = ["trainer.progress=false", "wandb.mode=disabled"]


@pytest.mark.slow  # a subprocess run of 9-10 s: make test stays under 10 min
def test_reproduce_prints_a_line_per_training(pipeline, tmp_path):
    proc = pipeline("reproduce", "sections=[train]", "train.betas=[2,inf]", "train.seeds=1",
                    "train.epochs=1", "wandb.mode=disabled", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("train ")]
    assert [ln.split(" (")[0] for ln in lines] == [
        "train 1/2: beta=2 seed=0", "train 2/2: beta=inf seed=0"], proc.stdout
    assert all(re.search(r"\(\d+ s\) test 0\.\d{3}$", ln) for ln in lines), lines


@pytest.mark.slow  # 16 s
def test_multirun_without_a_bar_names_each_job(pipeline, tmp_path):
    proc = pipeline("train", "hydra/launcher=local", "model.pool.beta=2,inf", "trainer.epochs=1",
                    "trainer.limit_batches=2", f"hydra.sweep.dir={tmp_path}", *QUICK,
                    multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ends = sorted(ln for ln in proc.stdout.splitlines() if "best val accuracy" in ln)
    assert len(ends) == 2, proc.stdout
    assert ends[0].startswith("job 0 (model.pool.beta=2 ") and "test accuracy 0." in ends[0]
    assert ends[1].startswith("job 1 (model.pool.beta=inf ")
