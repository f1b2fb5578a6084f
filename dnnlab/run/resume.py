"""A job's resume policy around the checkpoint (dnnlab.train.resume): resume or start, the replay
of a resumed run's metrics into W&B, and the command line that resumes an interrupted run."""
from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Callable
from typing import Any

from dnnlab.run.cli import console
from dnnlab.run.results import Results
from dnnlab.run.runtime import NothingToDo
from dnnlab.train.records import Interrupted
from dnnlab.train.resume import Checkpoint

DISCARDED = "metrics.discarded.jsonl"  # rows past the checkpoint that a resume redoes


def resume_or_start(ck: Checkpoint, switch: Any, config_now: Callable[[dict], dict],
                    epochs: int) -> bool:
    """trainer.resume (docs/train.md, "Resume"): True (resume: `ck.start` set) when `switch` is
    true, or auto and the run dir holds a checkpoint; a checkpoint of another config is
    refused. One rule says a run is done: results.json says done and the checkpoint's config
    is this one; then NothingToDo (dnnlab.run.runtime) with the old results."""
    if not (switch is True or (switch == "auto" and ck.exists())):
        return False
    ck.switch = f"trainer.resume={str(switch).lower()}"
    ck.resume(config_now)
    done = ck.state.next_epoch
    old = Results.read(ck.path.parent)
    if old.get("status") == "done" and (done >= epochs or old.get("stopped_epoch") is not None):
        raise NothingToDo(f"nothing to do: {ck.path.parent} already finished {done} epochs "
                          f"(trainer.epochs={epochs}) with this config; nothing changed. Raise "
                          "trainer.epochs to train longer", old)
    return True


def replay(tracker: Any, step: int) -> int:
    """After a resume from `step`: metrics.jsonl keeps its rows up to `step` (later ones, which
    the resume redoes, and lines cut by a kill go to metrics.discarded.jsonl); W&B gets them
    again from its own next step on (kill -9 loses what wandb buffered). Returns how many."""
    path = tracker.run_dir / "metrics.jsonl"
    keep, drop = [], []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            drop.append(line)
            continue
        (drop if row.get("_step", -1) > step else keep).append(row)
    if drop:
        with open(tracker.run_dir / DISCARDED, "a") as f:
            f.write("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in drop))
    tracker.restart_mirror()
    first, sent = tracker.next_step, 0
    for row in keep:
        s = row.pop("_step", None)
        again = s is not None and s >= first and tracker.active
        tracker.log(row, step=s, to_wandb=again)
        sent += again
    return sent


def resume_command(module: str, overrides: list[str], run_dir: Any) -> str:
    """The command line that resumes a run: its overrides + trainer.resume, hydra.run.dir."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in (
        "trainer.resume", "hydra.run.dir")]
    return shlex.join(["python", "-m", module, *keep, "trainer.resume=true",
                       f"hydra.run.dir={run_dir}"])


def interrupted_line(err: Any, command: str) -> str:
    """The one line of an interrupted run (a dnnlab.train.records.Interrupted): where it
    stopped, its last checkpoint, and `command`, which resumes it."""
    return (f"interrupted at epoch {err.epoch}, step {err.step}; checkpoint "
            f"{err.checkpoint or 'none yet (first epoch)'}; resume with: {command}")


def resumed_at(ck: Checkpoint, run: Any) -> int | None:
    """The step a resumed run starts from (None for a new run). Rank 0 shows the checkpoint's
    warning and replays the metrics up to that step into the tracker."""
    step = ck.state.step if ck.start is not None else None
    if ck.warning and run.world.is_main:
        console.print(f"warning: {ck.warning}", highlight=False, soft_wrap=True)
    if step is not None and run.world.is_main:
        replay(run.tracker, step)
    return step


@contextlib.contextmanager
def resumable(module: str, run: Any):
    """An Interrupted training run's one line names the command that resumes it."""
    try:
        yield
    except Interrupted as err:
        err.line = interrupted_line(err, resume_command(module, run.overrides, run.dir))
        raise
