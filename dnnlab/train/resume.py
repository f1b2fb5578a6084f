"""A run's checkpoint (nanoGPT's single dict) and its resume, in one object.

    ckpt = Checkpoint(run_dir / "checkpoint.pt", config)   # the resolved config of this run
    ckpt.resume(config_now)     # trainer.resume: the state to start from, or ConfigError
    fit(..., checkpoint=ckpt)   # restores ckpt.start, saves weights | TrainState.to_dict()

A resume may change only MAY_CHANGE (dnnlab.train.settings: more epochs and the keys that do
not change an experiment): any other difference would mix two experiments in one history, and
is refused in one line naming the keys and both values. The job's resume policy (resume or start,
the replay into W&B, the resume command) is dnnlab.run.resume.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dnnlab.core.errors import ConfigError, DnnlabError, first_line
from dnnlab.core.table import jsonable
from dnnlab.train.settings import MAY_CHANGE
from dnnlab.train.state import TrainState

KEYS = {"model", "optimizer", "epoch", "step", "history"}  # what makes a dnnlab checkpoint


@contextlib.contextmanager
def signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """A Ctrl-C or SIGTERM during the block is acted on when it ends (the same signal, raised
    again with the handlers as they were). A KeyboardInterrupt raised inside torch.save's
    writer comes out of its zip writer as a RuntimeError ("unexpected pos"): the stop would be
    lost and the file cut. Only the main thread handles signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    before = {s: signal.signal(s, lambda n, _f: got.append(n)) for s in signums}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])


def save_atomic(path: Path, state: dict, prev: Path | None = None) -> None:
    """torch.save to a temp file, fsync, rename over `path` (the old one kept as `prev`); a
    Ctrl-C or SIGTERM meanwhile stops the run once the file is whole (`signals_deferred`)."""
    tmp = path.with_name(path.name + ".tmp")
    with signals_deferred():
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            if prev is not None and path.exists():
                os.replace(path, prev)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise DnnlabError(f"cannot write {path}: {err.strerror or err}") from None


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of nested dicts (lists are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(before: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(key, value in the checkpoint, value now; None if missing) for each key outside
    MAY_CHANGE that differs."""
    a, b = flatten(jsonable(before)), flatten(jsonable(now))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in MAY_CHANGE and a.get(k) != b.get(k)]


def unreadable_why(err: Exception, limit: int = 160) -> str:
    """Why torch.load failed, in a whole sentence: torch's weights_only refusal (a page of
    advice) in a few words, else the error's first sentence, cut at a word if long."""
    text = first_line(err)
    if "Weights only load failed" in text:
        return "torch.load(weights_only=True) refused it: not a file of tensors, or corrupt"
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


class Checkpoint:
    """checkpoint.pt (and checkpoint.prev.pt, the one before): model, optimizer, scheduler, RNG
    states, epoch, step, history, probe errors and the config that made it."""

    def __init__(self, path: Path, config: dict):
        self.path, self.config = Path(path), jsonable(config)
        self.prev = self.path.with_name(self.path.stem + ".prev" + self.path.suffix)
        self.start: dict | None = None  # what a resume starts from: state dicts, TrainState's
        self.warning: str | None = None  # a bad checkpoint.pt passed over for the previous one
        self.switch = "trainer.resume=true"  # how the errors name the setting that resumes

    def exists(self) -> bool:
        return self.path.exists() or self.prev.exists()

    @property
    def state(self) -> TrainState | None:
        """The TrainState a resume starts from (None: a new run)."""
        return TrainState.from_dict(self.start) if self.start is not None else None

    def save(self, state: dict) -> None:
        save_atomic(self.path, state | {"config": json.dumps(self.config)}, prev=self.prev)

    def load(self) -> dict:
        """The newest readable state (else the previous one, `warning` naming the bad file);
        ConfigError naming the files when none loads."""
        if not self.path.exists() and not self.prev.exists():
            raise ConfigError(f"{self.switch}: no checkpoint in {self.path.parent} "
                              "(pass the run's dir as hydra.run.dir)")
        bad = []
        for path in (self.path, self.prev):
            if not path.exists():
                continue
            try:
                state = torch.load(path, weights_only=True, map_location="cpu")
                if not isinstance(state, dict) or not KEYS <= set(state):
                    raise ValueError("not a dnnlab checkpoint")
                TrainState.from_dict(state)  # its progress reads
            except Exception as err:  # noqa: BLE001 - truncated, corrupt, not a checkpoint
                bad.append(f"{path} is unreadable ({unreadable_why(err)})")
                continue
            if bad:
                self.warning = f"{bad[0]}; resuming from {path} (after epoch {state['epoch']})"
            return state
        raise ConfigError(f"{self.switch}: {'; '.join(bad)}; no good checkpoint to "
                          f"resume from. trainer.resume=false starts over in "
                          f"{self.path.parent} (setting its files aside)")

    def resume(self, config_now: Callable[[dict[str, Any]], dict]) -> dict:
        """Load the state and check this config made it; sets `start`. `config_now(pinned)` is
        the config now resolved with the checkpoint's MAY_CHANGE values (so T_max =
        trainer.epochs is no change)."""
        state = self.load()
        if state.get("config"):
            before = json.loads(state["config"])
            flat = flatten(before)
            diff = config_diff(before, config_now({k: flat[k] for k in MAY_CHANGE if k in flat}))
            if diff:
                show = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
                keys = "; ".join(f"{k}: {show(a)} in the checkpoint, {show(b)} now"
                                 for k, a, b in diff)
                also = ("; trainer.resume=false starts over in this dir, setting its files aside"
                        if self.switch.endswith("auto") else "")
                raise ConfigError(f"{self.switch} refused: the config differs from the one "
                                  f"that made {self.path} in {keys} (a resume may change only "
                                  f"{', '.join(MAY_CHANGE)}); nothing was written{also}")
        self.start = state
        return state
