"""The main job (`make run`): every topic's results, measured now, in report.md in the run dir.

    python -m pipelines.reproduce
    python -m pipelines.reproduce sections=[opcount,conv]
    python -m pipelines.reproduce train.epochs=2 'opcount.models=[alexnet]'

Each section is its topic's `report_section(settings, out_dir)` (dnnlab/<topic>/report.py),
with the settings of the node `<topic>:` in conf/reproduce.yaml. Every section's settings are
checked before the first one runs; a section that cannot be imported or fails is reported in
report.md with its first line (the traceback in <section>.error.txt) and the others go on; the
job then exits 1. report.md is rewritten after every section.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnnlab.run.cli import launch
from dnnlab.run.config import register
from dnnlab.run.report import reproduce, reproduce_settings
from dnnlab.run.runtime import run_job

register("reproduce", reproduce_settings)
@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "reproduce", reproduce)


if __name__ == "__main__":
    launch("pipelines.reproduce")
