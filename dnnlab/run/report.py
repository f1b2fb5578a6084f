"""The main job's report: each topic contributes a `Section`; `pipelines/reproduce.py` runs the
topics' `report_section(settings, out_dir)` in order and writes report.md.

This module holds the reproduce pipeline's settings (one typed node per topic); the Section
type is dnnlab.core.section, and the topics own their sections' content.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from dnnlab.core.errors import require

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
