"""The checkpoint (atomic, a bad one passed over), what a resume may change and the refusal line
(dnnlab.train.resume)."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from dnnlab.core.errors import ConfigError
from dnnlab.run.config import resolved_with
from dnnlab.train.resume import (
    MAY_CHANGE,
    Checkpoint,
    config_diff,
    flatten,
    save_atomic,
    unreadable_why,
)

CFG = {"seed": 0, "trainer": {"epochs": 2, "resume": False, "progress": True},
       "model": {"pool": {"beta": 4.0}, "builder": {"channels": [16, 32, 32]}},
       "scheduler": {"T_max": "${trainer.epochs}"}, "wandb": {"mode": "offline"}}


STATE = {"model": {}, "optimizer": {}, "epoch": 1, "step": 10, "history": [{"epoch": 0}]}


def _checkpoint(tmp_path, cfg: dict) -> Checkpoint:
    ck = Checkpoint(tmp_path / "checkpoint.pt", resolved_with(OmegaConf.create(cfg), {}))
    ck.save(STATE)
    return ck


def test_flatten_and_diff():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2],
                                                               "d": None}
    before = {"trainer": {"epochs": 2}, "model": {"pool": {"beta": 4.0}}, "x": 1}
    now = {"trainer": {"epochs": 5}, "model": {"pool": {"beta": math.inf}}, "y": 2}
    assert config_diff(before, now) == [("model.pool.beta", 4.0, "inf"), ("x", 1, None),
                                        ("y", None, 2)]


def test_more_epochs_and_the_resume_switch_are_accepted(tmp_path):
    ck = _checkpoint(tmp_path, CFG)
    now = OmegaConf.create(CFG)
    now.trainer.epochs, now.trainer.resume, now.wandb.mode = 10, True, "disabled"
    # T_max follows trainer.epochs: pinned to the checkpoint's value, it is no change
    state = Checkpoint(ck.path, {}).resume(lambda pinned: resolved_with(now, pinned))
    assert state["epoch"] == 1 and state["history"] == STATE["history"]


def test_no_checkpoint_and_a_truncated_one(tmp_path):
    ck = Checkpoint(tmp_path / "checkpoint.pt", {})
    with pytest.raises(ConfigError, match=r"^trainer.resume=true: no checkpoint in"):
        ck.load()
    ck.save(STATE)
    ck.save(STATE | {"epoch": 2})  # the first becomes checkpoint.prev.pt
    data = ck.path.read_bytes()
    ck.path.write_bytes(data[: len(data) // 2])  # cut by a kill or a full disk
    again = Checkpoint(ck.path, {})
    assert again.load()["epoch"] == 1
    assert again.warning.startswith(f"{ck.path} is unreadable") and "after epoch 1" in again.warning
    ck.prev.write_bytes(b"garbage\n")  # a text file: torch's weights_only unpickler refuses it
    with pytest.raises(ConfigError, match=r"no good checkpoint to resume from\. "
                       r"trainer\.resume=false starts over in .*\(setting its files aside\)$"
                       ) as err:
        Checkpoint(ck.path, {}).load()
    line = str(err.value)  # torch's page of weights_only advice in a few whole words
    assert f"{ck.prev} is unreadable (torch.load(weights_only=True) refused it: not a file of " \
           "tensors, or corrupt)" in line and "\n" not in line and "PyTorch 2.6" not in line


def test_why_unreadable_is_a_whole_sentence():
    long = RuntimeError("first sentence. " + "word " * 80)
    assert unreadable_why(long) == "first sentence."
    cut = unreadable_why(RuntimeError("word " * 80))
    assert cut.endswith("word ...") and len(cut) <= 165


def test_save_atomic_names_an_unwritable_path(tmp_path):
    save_atomic(tmp_path / "a.pt", {"x": torch.ones(2)})
    assert torch.load(tmp_path / "a.pt", weights_only=True)["x"].sum() == 2
    with pytest.raises(Exception, match=r"^cannot write .*missing/a.pt"):
        save_atomic(tmp_path / "missing" / "a.pt", {})


class _CtrlCWhilePickled:
    """Pickled as the int 5, sending this process SIGINT (or SIGTERM) on the way: a Ctrl-C in
    the middle of torch.save."""

    def __init__(self, signum):
        self.signum = signum

    def __reduce__(self):
        import signal

        signal.raise_signal(self.signum)
        return int, (5,)


@pytest.mark.parametrize("signum,raised", [("SIGINT", KeyboardInterrupt),
                                           ("SIGTERM", "Terminated")])
def test_a_stop_during_a_save_comes_after_the_file_is_whole(tmp_path, signum, raised):
    """Without the deferral the KeyboardInterrupt came out of torch.save's zip writer as
    RuntimeError('unexpected pos ...') and the stop was lost (CI's submitit SIGUSR2 test)."""
    import signal

    from dnnlab.run.runtime import Terminated, _on_sigterm

    before = signal.signal(signal.SIGTERM, _on_sigterm)
    raised = Terminated if raised == "Terminated" else raised
    try:
        save_atomic(tmp_path / "a.pt", {"x": torch.ones(2)})
        with pytest.raises(raised):
            save_atomic(tmp_path / "a.pt", {"x": torch.zeros(3), "y": [_CtrlCWhilePickled(
                getattr(signal, signum))] * 3}, prev=tmp_path / "a.prev.pt")
    finally:
        signal.signal(signal.SIGTERM, before)
    state = torch.load(tmp_path / "a.pt", weights_only=False)
    assert state["y"] == [5, 5, 5] and state["x"].tolist() == [0.0, 0.0, 0.0]
    assert torch.load(tmp_path / "a.prev.pt")["x"].tolist() == [1.0, 1.0]
    assert not (tmp_path / "a.pt.tmp").exists()



@pytest.mark.parametrize("key, value, shown", [
    ("model.pool.beta", math.inf, "model.pool.beta: 4.0 in the checkpoint, inf now"),
    ("model.builder.channels", [8, 8, 8],
     "model.builder.channels: [16, 32, 32] in the checkpoint, [8, 8, 8] now"),
    ("seed", 1, "seed: 0 in the checkpoint, 1 now"),
])
def test_another_config_is_refused_naming_the_keys(tmp_path, key, value, shown):
    now = OmegaConf.create(CFG)
    OmegaConf.update(now, key, value)
    ck = _checkpoint(tmp_path, CFG)
    with pytest.raises(ConfigError) as err:
        ck.resume(lambda pinned: resolved_with(now, pinned))
    assert ck.start is None
    line = str(err.value)
    assert line.startswith("trainer.resume=true refused") and shown in line
    assert "nothing was written" in line and "\n" not in line
    assert f"a resume may change only {', '.join(MAY_CHANGE)})" in line  # all of them

