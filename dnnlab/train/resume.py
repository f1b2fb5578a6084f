"""Resuming a training run safely: what may change between a run and its resume, and the
command that resumes an interrupted run.

A checkpoint records the resolved config that produced it (`dnnlab.train.loop.fit(config=)`).
A resume may change only the keys of `MAY_CHANGE` (more epochs continue training; the resume
switch, the progress bar, the W&B mode, and where the working dir is); any other difference
would mix two experiments in one history, and is refused with one line listing the keys and
both values. Launcher keys live in Hydra's own node, which is not part of the config compared.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

from dnnlab.errors import ConfigError
from dnnlab.table import jsonable

MAY_CHANGE = ("trainer.epochs", "trainer.resume", "trainer.progress", "wandb.mode",
              "wandb.watch.log", "wandb.watch.log_freq",
              "paths.root_dir", "paths.output_dir")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of nested dicts (lists are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(before: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(key, value in the checkpoint, value now) for every key outside MAY_CHANGE that
    differs (a key missing on one side shows as None)."""
    a, b = flatten(jsonable(before)), flatten(jsonable(now))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in MAY_CHANGE and a.get(k) != b.get(k)]


def check_same_config(checkpoint: dict, config_now: Callable[[dict[str, Any]], dict],
                      path: Any) -> None:
    """ConfigError listing the differing keys (both values) when the config now is not the one
    that made `checkpoint` (checkpoints written before configs were recorded are not compared).
    `config_now(pinned)` gives the resolved config now with the keys of `pinned` (the
    checkpoint's values of MAY_CHANGE) set before resolving, so values derived from them (the
    cosine schedule's T_max = trainer.epochs) do not count as changes."""
    recorded = checkpoint.get("config")
    if not recorded:
        return
    before = json.loads(recorded)
    flat = flatten(before)
    diff = config_diff(before, config_now({k: flat[k] for k in MAY_CHANGE if k in flat}))
    if diff:
        keys = "; ".join(f"{k}: {_show(a)} in the checkpoint, {_show(b)} now" for k, a, b in diff)
        raise ConfigError(f"trainer.resume=true refused: the config differs from the one that "
                          f"made {path} in {keys} (a resume may change only "
                          f"{', '.join(MAY_CHANGE[:4])}); nothing was written")


def _show(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def resume_command(module: str, overrides: list[str], run_dir: Any) -> str:
    """The command line that resumes a run: its overrides, with trainer.resume=true and
    hydra.run.dir=<run dir> instead of any given before."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in (
        "trainer.resume", "hydra.run.dir")]
    return shlex.join(["python", "-m", module, *keep, "trainer.resume=true",
                       f"hydra.run.dir={run_dir}"])
