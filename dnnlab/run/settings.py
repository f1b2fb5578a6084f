"""The settings every job shares, whatever its pipeline: `wandb` (conf/wandb/default.yaml, the
run name rule from the pipeline's primary config) and `paths` (conf/paths/default.yaml).
dnnlab.run.config adds them to each pipeline's schema."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from dnnlab.core.errors import ConfigError, require


class WandbMode(str, Enum):
    """offline: no account, no network (`wandb sync` later); online; disabled."""

    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class WatchConfig:
    """wandb.watch of a trained model: histograms every `log_freq` steps."""

    log: str | None = None  # gradients | parameters | all | null (no histograms)
    log_freq: int = 100

    def __post_init__(self) -> None:
        require(self.log in (None, "gradients", "parameters", "all"), "log", self.log,
                "expected gradients, parameters, all or null")
        require(self.log_freq >= 1, "log_freq", self.log_freq, "must be >= 1")


@dataclass
class RunNameRule:
    """How a pipeline names and tags its W&B runs (declared in its primary config): the name is
    `<pipeline>-<part>-...` then the other command-line overrides; `parts` are keys shown by
    value (`model.name` -> `smoothmax_cnn`, `model.pool.beta` -> `beta4`, a true flag
    `model.pool.learnable` -> `learnable`), `skip` keys or groups a name leaves out, and `tags`
    keys or config groups (`experiment`: Hydra's choice) whose values tag the run."""

    parts: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass
class WandbConfig:
    """Weights & Biases, one run per job (dnnlab.run.tracking)."""

    mode: WandbMode = WandbMode.offline
    project: str = "dnnlab"
    entity: str | None = None
    group: str | None = None  # null: the sweep's name in a multirun
    tags: Any = field(default_factory=list)  # a list of strings; one string is one tag
    init_timeout: float = 15.0  # seconds for online W&B to answer before going offline
    watch: WatchConfig = field(default_factory=WatchConfig)  # pipelines that train a model
    run_name: RunNameRule = field(default_factory=RunNameRule)

    def __post_init__(self) -> None:
        tags = [self.tags] if isinstance(self.tags, str) else list(self.tags or [])
        for i, t in enumerate(tags):
            require(isinstance(t, (str, int, float)) and not isinstance(t, bool),
                    f"tags[{i}]", t, "expected a string")
        self.tags = [str(t) for t in tags]
        require(self.init_timeout > 0, "init_timeout", self.init_timeout, "must be > 0")


@dataclass
class PathsConfig:
    """Where data and outputs go (conf/paths/default.yaml)."""

    root_dir: str = "${hydra:runtime.cwd}"
    data_dir: str = "${paths.root_dir}/data"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class JobConfig:
    """The groups every pipeline's config has."""

    wandb: WandbConfig = field(default_factory=WandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


# W&B's environment variables and the wandb keys they stand for (W&B's own convention: the
# variable applies unless the key is set explicitly)
WANDB_ENV = {"WANDB_MODE": "mode", "WANDB_PROJECT": "project", "WANDB_ENTITY": "entity"}
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's older names
_BAD_NAME_CHARS = set("/\\#?%:")  # what W&B refuses in a project or entity name


def wandb_from_env(wandb: Any, overrides: list[str], environ: Any = None) -> dict[str, str]:
    """Apply WANDB_MODE, WANDB_PROJECT and WANDB_ENTITY to the config node `wandb` (in place)
    where the config does not set the key explicitly: not on the command line (`overrides`, as
    typed) and still the value of conf/wandb/default.yaml (a config such as debug=fast that
    sets wandb.mode wins over the variable). A bad value is a ConfigError naming the variable;
    WANDB_DIR (where W&B writes, instead of the run dir) must be a directory or makeable.
    Returns {key: value} of what the environment set."""
    env = os.environ if environ is None else environ
    typed = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    default = WandbConfig()
    applied = {}
    for var, key in WANDB_ENV.items():
        raw = env.get(var)
        if raw is None or raw == "" or f"wandb.{key}" in typed:
            continue
        now = wandb[key]
        if (now.value if isinstance(now, Enum) else now) != (
                default.mode.value if key == "mode" else getattr(default, key)):
            continue  # set by a config file (debug=fast, an experiment)
        value = raw.strip()
        if key == "mode":
            value = _MODE_ALIASES.get(value.lower(), value.lower())
            if value not in {m.value for m in WandbMode}:
                raise ConfigError(f"{var}={raw!r}: expected online, offline or disabled (W&B's "
                                  f"environment variable; unset it, or give wandb.mode=...)")
        elif not value or _BAD_NAME_CHARS & set(value):
            raise ConfigError(f"{var}={raw!r}: not a W&B {key} name (no / \\ # ? % : and not "
                              f"empty; unset it, or give wandb.{key}=...)")
        wandb[key] = value
        applied[key] = value
    where = env.get("WANDB_DIR")
    if where:
        p = Path(where).expanduser()
        blocker = next((q for q in (p, *p.parents) if q.exists() and not q.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"WANDB_DIR={where!r}: {blocker} is a file, not a directory "
                              "(W&B's environment variable for where it writes; unset it to "
                              "write in the run dir)")
    return applied


def wandb_dir(run_dir: Path, environ: Any = None) -> Path:
    """Where W&B writes a run's files: $WANDB_DIR when set, else the run dir."""
    env = os.environ if environ is None else environ
    return Path(env["WANDB_DIR"]).expanduser() if env.get("WANDB_DIR") else Path(run_dir)
