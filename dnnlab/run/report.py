"""The main job's report: each topic contributes a `Section`; `reproduce` (the job of
pipelines/reproduce.py) runs the topics' `report_section(settings, out_dir)` in order and writes
report.md.

This module holds the reproduce pipeline's settings (one typed node per topic); the Section
type is dnnlab.core.section, and the topics own their sections' content.
"""
from __future__ import annotations

import dataclasses
import importlib
import time
import traceback
from dataclasses import dataclass, field
from inspect import signature
from typing import Any

from dnnlab.core.errors import first_line, require
from dnnlab.core.outputs import Outputs
from dnnlab.run.cli import console, status
from dnnlab.run.config import settings_of

SECTIONS = ("smoothmax", "opcount", "conv", "train")  # the order of docs/math.md


def reproduce_settings() -> type:
    """The schema of conf/reproduce.yaml: `sections` and one node per topic, typed by that
    topic's `ReportSettings` (so `python -m pipelines.reproduce smoothmax.n=100` is checked like
    `python -m pipelines.smoothmax n=100`). A topic whose report module cannot be imported gets
    an untyped node: the pipeline then reports the import error in that section, and the other
    sections still run."""
    fields = []
    for topic in SECTIONS:
        try:
            cls = importlib.import_module(f"dnnlab.{topic}.report").ReportSettings
        except Exception:  # noqa: BLE001 - reported by pipelines/reproduce.py in its section
            cls = None
        fields.append((topic, cls if cls is not None else Any,
                       field(default_factory=cls if cls is not None else dict)))
    return dataclasses.make_dataclass("ReproduceSettings", fields, bases=(_Sections,))


@dataclass
class _Sections:
    """conf/reproduce.yaml: which sections run, in the order of docs/math.md."""

    sections: list[str] = field(default_factory=lambda: list(SECTIONS))

    def __post_init__(self) -> None:
        for i, s in enumerate(self.sections):
            require(s in SECTIONS, f"sections[{i}]", s, f"expected one of {', '.join(SECTIONS)}")


HEADER = ("# dnnlab: the results of docs/math.md, measured\n\nEvery number below was measured by "
          "this run; the equations cited, (1a) to (3b), are those of docs/math.md.\n")


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


def reproduce(settings: Any, run: Any) -> Outputs:
    """The reproduce pipeline's job (a dnnlab.run.runtime.Run): each section in turn, report.md
    rewritten after each; a failed section is reported and the others go on."""
    out, tracker, parts, done = run.dir, run.tracker, [HEADER], {}
    for name, p in plan(settings).items():
        t0 = time.perf_counter()
        console.rule(f"[bold]{name}")
        try:
            if isinstance(p, Exception):
                raise p
            fn = p[0].report_section
            say = {"progress": lambda line: console.print(line, highlight=False)}
            with status(f"{name} ..."):
                section = fn(p[1], out, **(say if "progress" in signature(fn).parameters else {}))
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
                console.print(t.to_rich(max_rows=30))  # as each section ends
            for key, png in section.images.items():
                tracker.image(key, png)
            tracker.summary(**section.summary)
            done[name] = "ok"
        tracker.summary(sections=done, **{f"seconds/{name}": time.perf_counter() - t0})
        (out / "report.md").write_text("\n".join(parts))  # written as it goes
        run.results.update(sections=done, report=str(out / "report.md"))
    report = out / "report.md"
    failed = [k for k, v in done.items() if v != "ok"]
    return Outputs(footer=f"\n[bold]report:[/] {report}", failure=(
        f"report sections failed: {', '.join(failed)} (see {report})" if failed else None))
