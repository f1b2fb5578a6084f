"""W&B as its users drive it: WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY and WANDB_DIR apply where
the config does not set the key explicitly, a bad value is one line naming the variable; the end
of a run names its W&B run and the `wandb sync` command of the right offline dir (a resumed
run: the newest, which holds the whole history). Real W&B offline, read back from its files."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from dnnlab.core.errors import ConfigError
from dnnlab.run.settings import WandbConfig, wandb_from_env
from tests.conftest import ROOT
from tests.wandb_reader import find_runs, summarize

QUICK = ["trainer.progress=false", "trainer.epochs=1", "trainer.limit_batches=2"]


def _train(*overrides: str, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, WANDB_SILENT="true", PYTHONWARNINGS="ignore")
    for k in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
        e.pop(k, None)
    e.update(env)
    return subprocess.run([sys.executable, "-m", "pipelines.train", *overrides], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=600)


def _node(**kv):
    return OmegaConf.merge(OmegaConf.structured(WandbConfig), kv)


def test_the_variables_apply_unless_the_key_is_set():
    w = _node()
    assert wandb_from_env(w, [], {"WANDB_MODE": "online", "WANDB_PROJECT": "p",
                                  "WANDB_ENTITY": "me"}) == {"mode": "online", "project": "p",
                                                              "entity": "me"}
    assert w.mode.value == "online" and w.project == "p" and w.entity == "me"
    w = _node()  # typed on the command line, even as the default value: the command line wins
    assert wandb_from_env(w, ["wandb.mode=offline", "wandb.project=x"],
                          {"WANDB_MODE": "disabled", "WANDB_PROJECT": "p"}) == {}
    w = _node(mode="disabled")  # set by a config file (debug=fast): it wins
    assert wandb_from_env(w, [], {"WANDB_MODE": "online"}) == {}
    assert wandb_from_env(_node(), [], {"WANDB_MODE": "dryrun"}) == {"mode": "offline"}


@pytest.mark.parametrize("var, value, needle", [
    ("WANDB_MODE", "garbage", "WANDB_MODE='garbage': expected online, offline or disabled"),
    ("WANDB_PROJECT", "a/b", "WANDB_PROJECT='a/b': not a W&B project name"),
    ("WANDB_ENTITY", "", None), ("WANDB_DIR", "/etc/hostname/x", "/etc/hostname is a file")])
def test_a_bad_value_names_the_variable(var, value, needle):
    if needle is None:  # an empty variable is no setting
        assert wandb_from_env(_node(), [], {var: value}) == {}
        return
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        wandb_from_env(_node(), [], {var: value})


@pytest.mark.slow
def test_wandb_mode_from_the_environment_as_a_user_meets_it(tmp_path):
    bad = _train(f"hydra.run.dir={tmp_path / 'bad'}", *QUICK, WANDB_MODE="garbage")
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(lines) == 1, bad.stderr
    assert "WANDB_MODE='garbage'" in lines[0] and not (tmp_path / "bad").exists()

    off = _train(f"hydra.run.dir={tmp_path / 'off'}", *QUICK, WANDB_MODE="disabled")
    assert off.returncode == 0, off.stderr[-3000:]
    assert not (tmp_path / "off" / "wandb").exists() and "W&B: run" not in off.stdout

    proj = _train(f"hydra.run.dir={tmp_path / 'p'}", *QUICK, WANDB_MODE="disabled",
                  WANDB_PROJECT="from-env", WANDB_DIR=str(tmp_path / "wdir"))
    assert proj.returncode == 0 and not (tmp_path / "wdir").exists()  # disabled: nothing

    proj = _train(f"hydra.run.dir={tmp_path / 'p2'}", "wandb.mode=offline", *QUICK,
                  WANDB_MODE="disabled", WANDB_PROJECT="from-env",
                  WANDB_DIR=str(tmp_path / "wdir"))
    assert proj.returncode == 0, proj.stderr[-3000:]
    (run,) = find_runs(tmp_path / "wdir")  # WANDB_DIR: W&B's files there, not in the run dir
    assert summarize(run)["run"].project == "from-env"
    assert not (tmp_path / "p2" / "wandb").exists()
    (line,) = [ln for ln in proj.stdout.splitlines() if ln.startswith("W&B: run ")]
    assert f"upload with: wandb sync {run.parent}" in line


@pytest.mark.slow  # a subprocess run of 13-18 s: make test stays under 10 min
def test_the_end_names_the_run_and_the_dir_to_sync(tmp_path):
    d = tmp_path / "run"
    first = _train(f"hydra.run.dir={d}", *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train(f"hydra.run.dir={d}", QUICK[0], QUICK[2], "trainer.epochs=2")  # resumes
    assert second.returncode == 0, second.stderr[-3000:]
    dirs = sorted((d / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and dirs[0].name[-8:] == dirs[1].name[-8:]  # one id, two dirs
    (l1,) = [ln for ln in first.stdout.splitlines() if ln.startswith("W&B: run ")]
    (l2,) = [ln for ln in second.stdout.splitlines() if ln.startswith("W&B: run ")]
    rid = dirs[0].name[-8:]
    assert f"(id {rid})" in l1 and l1.endswith(f"upload with: wandb sync {dirs[0]}")
    assert f"(id {rid})" in l2 and f"upload with: wandb sync {dirs[1]}; resumed" in l2
    assert dirs[0].name in l2
    steps = [r.get("_step") for r in summarize(next(dirs[1].glob("*.wandb")))["history"]]
    assert 1 in steps and 2 in steps and 3 in steps  # the newest holds the first run's steps
