"""A topic's part of the main job's report: its markdown, and what goes to W&B and the run dir
(dnnlab.run.report gathers the sections into report.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnnlab.core.table import Table


@dataclass
class Section:
    """A topic's part of report.md, plus what goes to W&B and the run dir."""

    title: str
    markdown: str
    images: dict[str, Path] = field(default_factory=dict)  # W&B key -> PNG in the run dir
    tables: list[Table] = field(default_factory=list)  # CSV in the run dir, wandb.Table
    summary: dict[str, Any] = field(default_factory=dict)  # W&B summary / results.json
