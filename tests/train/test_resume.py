"""What a resume may change, the refusal line, and the resume command (dnnlab.train.resume)."""
from __future__ import annotations

import json
import math
import shlex

import pytest
from omegaconf import OmegaConf

from dnnlab.config import resolved_with
from dnnlab.errors import ConfigError
from dnnlab.train.resume import MAY_CHANGE, check_same_config, config_diff, flatten, resume_command

CFG = {"seed": 0, "trainer": {"epochs": 2, "resume": False, "progress": True},
       "model": {"pool": {"beta": 4.0}, "builder": {"channels": [16, 32, 32]}},
       "scheduler": {"T_max": "${trainer.epochs}"}, "wandb": {"mode": "offline"}}


def _checkpoint(cfg: dict) -> dict:
    return {"config": json.dumps(resolved_with(OmegaConf.create(cfg), {}))}


def test_flatten_and_diff():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2],
                                                               "d": None}
    before = {"trainer": {"epochs": 2}, "model": {"pool": {"beta": 4.0}}, "x": 1}
    now = {"trainer": {"epochs": 5}, "model": {"pool": {"beta": math.inf}}, "y": 2}
    assert config_diff(before, now) == [("model.pool.beta", 4.0, "inf"), ("x", 1, None),
                                        ("y", None, 2)]
    assert "trainer.epochs" in MAY_CHANGE


def test_more_epochs_and_the_resume_switch_are_accepted():
    ck = _checkpoint(CFG)
    now = OmegaConf.create(CFG)
    now.trainer.epochs, now.trainer.resume, now.wandb.mode = 10, True, "disabled"
    # T_max follows trainer.epochs: pinned to the checkpoint's value, it is no change
    check_same_config(ck, lambda pinned: resolved_with(now, pinned), "ck.pt")
    check_same_config({}, lambda pinned: {}, "old.pt")  # a checkpoint without a config


@pytest.mark.parametrize("key, value, shown", [
    ("model.pool.beta", math.inf, "model.pool.beta: 4.0 in the checkpoint, inf now"),
    ("model.builder.channels", [8, 8, 8],
     "model.builder.channels: [16, 32, 32] in the checkpoint, [8, 8, 8] now"),
    ("seed", 1, "seed: 0 in the checkpoint, 1 now"),
])
def test_another_config_is_refused_naming_the_keys(key, value, shown):
    now = OmegaConf.create(CFG)
    OmegaConf.update(now, key, value)
    with pytest.raises(ConfigError) as err:
        check_same_config(_checkpoint(CFG), lambda pinned: resolved_with(now, pinned), "ck.pt")
    line = str(err.value)
    assert line.startswith("trainer.resume=true refused") and shown in line
    assert "nothing was written" in line and "\n" not in line


def test_resume_command_replaces_resume_and_run_dir():
    cmd = resume_command("pipelines.train", ["model.pool.beta=inf", "trainer.resume=false",
                                             "hydra.run.dir=old", "data=synthetic"], "/tmp/r 1")
    assert shlex.split(cmd) == ["python", "-m", "pipelines.train", "model.pool.beta=inf",
                                "data=synthetic", "trainer.resume=true",
                                "hydra.run.dir=/tmp/r 1"]
