"""What a job hands back to the runner (dnnlab.run.runtime.run_job), which owns every output:
the job computes, run_job merges `results` into results.json, sends the tables, images and
summary to the tracker (W&B and the run dir) and prints `show` in order, then `results: <path>`.

    return Outputs(results=result.to_dict(), tables=result.tables(), images={"plot": png},
                   summary=result.summary(), show=[overview_table, "one line"])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnnlab.core.table import Table


@dataclass
class Outputs:
    results: dict[str, Any] = field(default_factory=dict)  # merged into results.json
    tables: list[Table] = field(default_factory=list)  # <key>.csv in the run dir, wandb.Table
    images: dict[str, Path] = field(default_factory=dict)  # W&B key -> PNG in the run dir
    captions: dict[str, str] = field(default_factory=dict)  # W&B key -> an image's caption
    summary: dict[str, Any] = field(default_factory=dict)  # the W&B run's summary
    show: list[Any] = field(default_factory=list)  # terminal, in order: a Table, a line, rich
    footer: str = "results: {path}"  # the last line; {path} is results.json's
    failure: str | None = None  # the job's verdict: a DnnlabError once everything is written


@dataclass
class Prepared:
    """What a pipeline's `prepare` accepted (it builds and validates, and writes nothing): the
    typed settings, what it built for the job, and whether this run resumes the run dir's."""

    settings: Any
    built: Any = None
    resume: bool = False
