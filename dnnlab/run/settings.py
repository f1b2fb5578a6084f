"""The settings every job shares, whatever its pipeline: `wandb` (conf/wandb/default.yaml, the
run name rule from the pipeline's primary config) and `paths` (conf/paths/default.yaml).
dnnlab.run.config adds them to each pipeline's schema."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dnnlab.core.errors import require


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
