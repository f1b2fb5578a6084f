"""The main job: reproduce the seed's results and write report.md in the run dir.

    python -m pipelines.reproduce            # what `make run` runs
    python -m pipelines.reproduce sections=[opcount]

Each capability adds a section (a `report_section(cfg, out_dir, tracker) -> str` in its
pipeline module). A section that fails is reported in the report and the others go on.
"""
from __future__ import annotations

import importlib
import time
import traceback

import hydra
from omegaconf import DictConfig

from dnnlab.cli import console, run_job
from dnnlab.errors import ConfigError
from dnnlab.tracking import Tracker

SECTIONS = {
    "opcount": "pipelines.count_ops",
    "smooth_max": "pipelines.lse_limits",
    "conv_backprop": "pipelines.grad_check",
    "train": "pipelines.train",
}


def job(cfg: DictConfig, tracker: Tracker) -> dict:
    out = tracker.run_dir
    parts = ["# dnnlab: the seed's results, reproduced\n",
             "Source: `shared/seed/hw7-solutions.md` (Mathematical Foundation of DNN, HW 7). "
             "Every number below was measured by this run.\n"]
    status = {}
    for name in cfg.sections:
        if name not in SECTIONS:
            raise ConfigError(f"sections: unknown section '{name}' (known: {list(SECTIONS)})")
        t0 = time.perf_counter()
        console.rule(f"[bold]{name}")
        try:
            module = importlib.import_module(SECTIONS[name])
            section = module.report_section
        except (ImportError, AttributeError):
            status[name] = "not available"
            continue
        try:
            md = section(cfg, out, tracker)
            status[name] = "ok"
        except Exception as err:  # noqa: BLE001 - one section failing must not lose the others
            md = f"\n## {name}\n\n**This section failed:** `{type(err).__name__}: {err}`\n"
            status[name] = f"failed: {err}"
            (out / f"{name}.error.txt").write_text(traceback.format_exc())
        parts.append(md)
        tracker.summary(sections=status, **{f"seconds/{name}": time.perf_counter() - t0})
        (out / "report.md").write_text("\n".join(parts))  # written as it goes
    report = out / "report.md"
    report.write_text("\n".join(parts))
    console.print(f"\n[bold]report:[/] {report}")
    return {"sections": status, "report": str(report)}


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "reproduce", job)


if __name__ == "__main__":
    from dnnlab.cli import launch

    launch("pipelines.reproduce")
