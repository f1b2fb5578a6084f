"""The main job's report: each topic contributes a `Section`; `pipelines/reproduce.py` runs the
topics' `report_section(settings, out_dir)` in order and writes report.md.

This module holds the reproduce pipeline's settings (one typed node per topic) and the Section
type; the topics own their sections' content.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnnlab.errors import require
from dnnlab.table import Table

SECTIONS = ("smoothmax", "opcount", "conv", "train")  # the order of docs/math.md


@dataclass
class Section:
    """A topic's part of report.md, plus what goes to W&B and the run dir."""

    title: str
    markdown: str
    images: dict[str, Path] = field(default_factory=dict)  # W&B key -> PNG in the run dir
    tables: list[Table] = field(default_factory=list)  # CSV in the run dir, wandb.Table
    summary: dict[str, Any] = field(default_factory=dict)  # W&B summary / results.json


@dataclass
class ReproduceSettings:
    """conf/reproduce.yaml: which sections, and each topic's report settings (checked against
    the topic's `ReportSettings` when the section starts, so one topic that cannot be imported
    is an error in its own section, not in the whole report)."""

    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    smoothmax: Any = field(default_factory=dict)
    opcount: Any = field(default_factory=dict)
    conv: Any = field(default_factory=dict)
    train: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, s in enumerate(self.sections):
            require(s in SECTIONS, f"sections[{i}]", s, f"expected one of {', '.join(SECTIONS)}")
