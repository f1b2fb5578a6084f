"""experiment=search: hydra-optuna-sweeper over the learning rate and beta, maximizing
best_val_accuracy; the study in SQLite in the sweep dir, resumed with its trials by the same
command; a failed trial recorded and the search going on; trials in the sweep summary."""
from __future__ import annotations

import json

import optuna
import pytest
import yaml

from tests.conftest import run_pipeline

ARGS = ["experiment=search", "trainer.epochs=1", "trainer.progress=false",
        "trainer.probe_every=0", "wandb.mode=disabled"]


def _study(sweep):
    return optuna.load_study(study_name="search", storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_search_maximizes_best_val_accuracy_and_resumes_with_its_trials(tmp_path):
    sweep = tmp_path / "search"
    proc = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    vals = [json.loads((sweep / str(j) / "results.json").read_text())["best_val_accuracy"]
            for j in range(3)]
    assert best["best_value"] == max(vals)  # the objective: never a test metric
    assert set(best["best_params"]) == {"optimizer.lr", "model.pool.beta"}
    summary = json.loads((sweep / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done"] * 3
    assert len(summary["groups"]) == 3 and all(g["n"] == 1 for g in summary["groups"])
    assert set(summary["groups"][0]["key"]) == {"optimizer.lr", "model.pool.beta"}
    # the same command again (as after a kill): the study goes on with its 3 trials
    again = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-3000:]
    study = _study(sweep)
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == [0, 1, 2, 3, 4]
    assert study.best_value == max(
        json.loads((sweep / str(j) / "results.json").read_text())["best_val_accuracy"]
        for j in range(5))
    assert len(json.loads((sweep / "summary.json").read_text())["jobs"]) == 5


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path):
    sweep = tmp_path / "search"
    proc = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=6", "model.pool.beta=choice(4,-1)",
                        f"hydra.sweep.dir={sweep}")
    study = _study(sweep)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "FAIL" in states and "COMPLETE" in states
    summary = json.loads((sweep / "summary.json").read_text())
    failed = [j["job"] for j in summary["jobs"] if j["status"] == "failed"]
    assert failed == [i for i, s in enumerate(states) if s == "FAIL"] == summary["failed"]
    assert all("model.pool.beta=-1" in summary["jobs"][j]["error"] for j in failed)
    # every trial ran; the failures are one line each at the end, and the exit status says so
    assert proc.returncode == 1 and (sweep / "optimization_results.yaml").exists()
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: job")]
    assert len(lines) == len(failed) and all(x.endswith("expected a number in (0, inf]")
                                             for x in lines), proc.stderr[-2000:]
