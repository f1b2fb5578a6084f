"""trainer.resume=false into a run dir that holds a run: the new run starts over there, the old
one's files set aside in <run dir>/replaced-<time>/ (said in one line), nothing of it left where
the new run writes: metrics.jsonl holds one run's steps, W&B's live dir one offline run."""
from __future__ import annotations

import json

from dnnlab.core.beta import BETA_INF_FLOAT
from tests.wandb_reader import find_runs, summarize

QUICK = ["trainer.progress=false"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_false_replaces_the_old_run(pipeline, tmp_path):
    d = tmp_path / "run"
    first = pipeline("train", f"hydra.run.dir={d}", "trainer.epochs=1", *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    old = json.loads((d / "results.json").read_text())
    second = pipeline("train", f"hydra.run.dir={d}", "trainer.epochs=2", "trainer.resume=false",
                      "model.pool.beta=inf", *QUICK)
    assert second.returncode == 0, second.stderr[-3000:]
    (aside,) = d.glob("replaced-*")
    said = [ln for ln in second.stdout.splitlines() if "starting over" in ln]
    assert len(said) == 1 and str(aside) in said[0], second.stdout

    steps = [r["_step"] for r in _rows(d) if "_step" in r and "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one run's steps, once each
    epochs = [r["epoch"] for r in _rows(d) if "val/accuracy" in r]
    assert epochs == [0, 1]
    assert sum("test/accuracy" in r for r in _rows(d)) == 1
    new = json.loads((d / "results.json").read_text())
    assert str(new["beta"]) == "inf" and len(new["history"]) == 2

    (live,) = find_runs(d / "wandb")  # one W&B offline run where the new one writes
    assert summarize(live)["config"]["model"]["pool"]["beta"] == BETA_INF_FLOAT
    (kept,) = find_runs(aside / "wandb")  # the old run, whole, beside it
    assert kept.name != live.name
    assert json.loads((aside / "results.json").read_text()) == old
    assert len([r for r in _rows(aside) if "val/accuracy" in r]) == 1
