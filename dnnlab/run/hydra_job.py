"""What Hydra tells a job about itself (public HydraConfig only), in one place: its run dir,
whether it is part of a multirun, its overrides and config-group choices, and its `.hydra/`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dnnlab.train.settings import SAME_EXPERIMENT

# conf/hydra/default.yaml names run dirs <time>-<pid>_<overrides>. Cached, so that a multirun's
# workers (which get a copy of the resolver cache) agree with the main process.
DIRNAME_MAX = 80  # characters of the overrides in a run dir's name


def _overrides_dirname(overrides: str) -> str:
    s = str(overrides or "").replace("/", "_").replace(os.sep, "_")
    return f"_{s[:DIRNAME_MAX]}" if s else ""


OmegaConf.register_new_resolver("dnnlab_pid", lambda: str(os.getpid()), use_cache=True,
                                replace=True)
OmegaConf.register_new_resolver("dnnlab_overrides", _overrides_dirname, use_cache=True,
                                replace=True)
# the overrides a run dir's name leaves out (hydra.job.config.override_dirname.exclude_keys)
OmegaConf.register_new_resolver("dnnlab_same_experiment", lambda: list(SAME_EXPERIMENT),
                                replace=True)


@dataclass
class HydraJob:
    """The job as Hydra runs it (outside Hydra: the working dir, a single run)."""

    run_dir: Path
    multirun: bool = False
    sweep_name: str | None = None  # `<pipeline>-<sweep dir name>`: the W&B group of a sweep
    overrides: list[str] = field(default_factory=list)  # the task overrides, as typed
    choices: dict = field(default_factory=dict)  # config group -> option (experiment: ...)
    num: int | None = None  # the job's number in a multirun (hydra.job.num)

    def label(self) -> str:
        """`job 3 (model.pool.beta=inf seed=1): ` in a multirun, so that each job's lines say
        which one they are (joblib's workers print in any order); '' for a single run."""
        if not self.multirun:
            return ""
        return f"job {self.num} ({' '.join(self.overrides) or 'no overrides'}): "


def current() -> HydraJob:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return HydraJob(Path(os.getcwd()))
    hc = HydraConfig.get()
    multi = hc.mode == RunMode.MULTIRUN
    return HydraJob(Path(hc.runtime.output_dir), multi,
                    f"{hc.job.name}-{Path(hc.sweep.dir).name}" if multi else None,
                    [str(o) for o in hc.overrides.task],
                    {str(k): v for k, v in (hc.runtime.choices or {}).items()},
                    int(hc.job.num) if multi and hc.job.get("num") is not None else None)


def write_hydra_dir(run_dir: Path, cfg: DictConfig) -> None:
    """`.hydra/` (config.yaml, hydra.yaml, overrides.yaml), written by dnnlab.run.runtime once the
    config is accepted (conf/hydra/default.yaml: output_subdir null), so that a refused config
    or resume leaves an existing run's record as it was."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    for name, node in {"hydra.yaml": hc, "overrides.yaml": hc.overrides.task,
                       "config.yaml": cfg}.items():
        tmp = d / (name + ".tmp")
        tmp.write_text(OmegaConf.to_yaml(node))
        os.replace(tmp, d / name)
