"""A multirun's sweep dir as dnnlab leaves it: numbered job dirs, each with its overrides
(`.hydra/overrides.yaml`) and, when the job failed, its `failed.json`; and `FailedJobs`, the
Hydra callback of every pipeline that turns what cannot or did not run into one line each."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dnnlab.core.jsonio import read_json
from dnnlab.run.cli import error_line

FAILED = "failed.json"  # a multirun job's error, read by the sweep summary and FailedJobs


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The numbered job dirs of a sweep dir, in job order."""
    if not sweep_dir.is_dir():
        return []
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))


class FailedJobs(Callback):
    """Hydra callback of every pipeline (conf/hydra/default.yaml). Before a multirun: a launcher
    that cannot start is one line. After it: an empty sweep is one line, and so is each failed
    job (its failed.json); exit 1 if any. The other jobs' results are kept."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if "SlurmLauncher" in target and not shutil.which("sbatch"):
            error_line("hydra/launcher=slurm: srun/sbatch not found; use "
                       "hydra/launcher=slurm_local to run the SLURM code path locally")
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = job_dirs(sweep_dir)
        if not jobs:
            if [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]:
                shutil.rmtree(sweep_dir)  # Hydra's record of a sweep that ran nothing
            error_line(f"the sweep launched no job (overrides: "
                       f"{' '.join(config.hydra.overrides.task) or 'none'}); nothing was run")
            sys.exit(1)
        failed = [(j, read_json(j / FAILED) or {}) for j in jobs if (j / FAILED).exists()]
        for j, f in failed:
            ov = read_overrides(j)
            error_line(f"job {j.name} ({' '.join(ov)}): {f.get('error', 'failed')}")
        if failed:
            sys.exit(1)


def read_overrides(job_dir: Path) -> list[str]:
    import yaml

    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(x) for x in (yaml.safe_load(path.read_text()) or [])] if path.exists() else []
