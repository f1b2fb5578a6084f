"""dnnlab.run.resume: the job's resume policy (resume or start, done means nothing to do), the
resume command and the line of an interrupted run."""
from __future__ import annotations

import shlex

import pytest
from omegaconf import OmegaConf

from dnnlab.core.errors import ConfigError
from dnnlab.run.config import resolved_with
from dnnlab.run.results import Results
from dnnlab.run.resume import interrupted_line, resumable, resume_command, resume_or_start
from dnnlab.run.runtime import NothingToDo
from dnnlab.train.records import Interrupted
from dnnlab.train.resume import Checkpoint

CFG = {"seed": 0, "trainer": {"epochs": 2, "resume": False}}
STATE = {"model": {}, "optimizer": {}, "epoch": 1, "step": 10, "history": [{"epoch": 0}]}


def _now(epochs: int):
    cfg = OmegaConf.create(CFG)
    cfg.trainer.epochs = epochs
    return lambda pinned: resolved_with(cfg, pinned)


def _saved(tmp_path) -> Checkpoint:
    ck = Checkpoint(tmp_path / "checkpoint.pt", resolved_with(OmegaConf.create(CFG), {}))
    ck.save(STATE)
    return Checkpoint(ck.path, ck.config)


def test_start_unless_asked_or_auto_finds_a_checkpoint(tmp_path):
    empty = Checkpoint(tmp_path / "checkpoint.pt", CFG)
    assert resume_or_start(empty, False, _now(2), 2) is False
    assert resume_or_start(empty, "auto", _now(2), 2) is False and empty.start is None
    with pytest.raises(ConfigError, match=r"^trainer\.resume=true: no checkpoint"):
        resume_or_start(empty, True, _now(2), 2)


def test_resume_sets_the_start_and_a_done_run_is_nothing_to_do(tmp_path):
    ck = _saved(tmp_path)
    assert resume_or_start(ck, "auto", _now(5), 5) is True and ck.start["step"] == 10
    Results(tmp_path).update(status="done", test_accuracy=0.9)
    assert resume_or_start(_saved(tmp_path), True, _now(5), 5) is True  # more epochs: resume
    with pytest.raises(NothingToDo, match="already finished 2 epochs") as done:
        resume_or_start(_saved(tmp_path), True, _now(2), 2)
    assert done.value.result["test_accuracy"] == 0.9  # the old results, unchanged


def test_resume_command_replaces_resume_and_run_dir():
    cmd = resume_command("pipelines.train", ["model.pool.beta=inf", "trainer.resume=false",
                                             "hydra.run.dir=old", "data=synthetic"], "/tmp/r 1")
    assert shlex.split(cmd) == ["python", "-m", "pipelines.train", "model.pool.beta=inf",
                                "data=synthetic", "trainer.resume=true",
                                "hydra.run.dir=/tmp/r 1"]


def test_an_interrupted_run_names_its_resume_command(tmp_path):
    class _Run:
        overrides, dir = ["seed=1"], tmp_path

    with pytest.raises(Interrupted) as stopped, resumable("pipelines.train", _Run()):
        raise Interrupted(3, 42, tmp_path / "checkpoint.pt")
    assert stopped.value.line == interrupted_line(stopped.value, resume_command(
        "pipelines.train", ["seed=1"], tmp_path))
    assert stopped.value.line.startswith("interrupted at epoch 3, step 42; checkpoint ")
    assert stopped.value.line.endswith(f"trainer.resume=true hydra.run.dir={tmp_path}")
