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

import importlib
import time
import traceback

import hydra
from omegaconf import DictConfig

from dnnlab.core.errors import DnnlabError, first_line
from dnnlab.run.cli import console, launch, status
from dnnlab.run.config import register, settings_of
from dnnlab.run.report import reproduce_settings
from dnnlab.run.runtime import Run, run_job

register("reproduce", reproduce_settings)
HEADER = ("# dnnlab: the results of docs/math.md, measured\n\nEvery number below was measured by "
          "this run; the equations cited, (1a) to (4b), are those of docs/math.md.\n")


def plan(settings) -> dict:
    """section -> (report module, its typed settings), or the import error of that section."""
    plans = {}
    for name in settings.sections:
        try:
            module = importlib.import_module(f"dnnlab.{name}.report")
        except Exception as err:  # noqa: BLE001 - reported in the section, the others go on
            plans[name] = err
            continue
        plans[name] = (module, settings_of(module.ReportSettings, getattr(settings, name), name))
    return plans


def job(settings, run: Run) -> dict:
    out, tracker, parts, done = run.dir, run.tracker, [HEADER], {}
    for name, p in plan(settings).items():
        t0 = time.perf_counter()
        console.rule(f"[bold]{name}")
        try:
            if isinstance(p, Exception):
                raise p
            with status(f"{name} ..."):
                section = p[0].report_section(p[1], out)
        except Exception as err:  # noqa: BLE001 - one section failing must not lose the others
            first = first_line(err)
            (out / f"{name}.error.txt").write_text(
                "".join(traceback.format_exception(type(err), err, err.__traceback__)))
            parts.append(f"\n## {name}\n\n**This section failed:** `{type(err).__name__}: "
                         f"{first}` (traceback: `{name}.error.txt`)\n")
            done[name] = f"failed: {type(err).__name__}: {first}"
        else:
            parts.append(section.markdown)
            for t in section.tables:
                tracker.table(t)
                console.print(t.to_rich(max_rows=30))
            for key, png in section.images.items():
                tracker.image(key, png)
            tracker.summary(**section.summary)
            done[name] = "ok"
        tracker.summary(sections=done, **{f"seconds/{name}": time.perf_counter() - t0})
        (out / "report.md").write_text("\n".join(parts))  # written as it goes
        run.results.update(sections=done, report=str(out / "report.md"))
    report = out / "report.md"
    console.print(f"\n[bold]report:[/] {report}")
    failed = [k for k, v in done.items() if v != "ok"]
    if failed:
        raise DnnlabError(f"report sections failed: {', '.join(failed)} (see {report})")
    return run.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "reproduce", job)


if __name__ == "__main__":
    launch("pipelines.reproduce")
