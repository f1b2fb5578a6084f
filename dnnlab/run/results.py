"""results.json, the record of one job: one owner, one writer.

    results = Results(run_dir)            # made by dnnlab.run.runtime.run_job, handed to the job
    results.update(test_accuracy=0.97)    # merged and written now (atomically)

A job is the only one that fills it; the runtime adds `status` (running, then done, failed or
interrupted) and `error` through the same object. `status: done` and the config of the run dir's
checkpoint are what makes a job finished: a re-run skips it (docs/train.md, "Resume").
JSON holds no infinities: inf is the string "inf".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dnnlab.core.jsonio import read_json, write_json

FILE = "results.json"


class Results(dict):
    """The job's results.json: a dict written to the run dir on every `update`."""

    def __init__(self, run_dir: Path, write: bool = True):
        super().__init__()
        self.path, self.write = Path(run_dir) / FILE, write  # write=False: rank > 0 of a run

    @staticmethod
    def read(run_dir: Path) -> dict:
        """A run dir's results.json as written so far ({} when there is none or it is cut)."""
        data = read_json(Path(run_dir) / FILE)
        return data if isinstance(data, dict) else {}

    def update(self, *args: Any, **kv: Any) -> None:  # type: ignore[override]
        super().update(*args, **kv)
        self.save()

    def save(self) -> None:
        if self.write:
            write_json(self.path, dict(self))
