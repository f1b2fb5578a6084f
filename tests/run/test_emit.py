"""dnnlab.run.runtime.emit: a job's Outputs written by the runner: results.json, the tracker's
files (CSV, metrics.jsonl), the terminal in order, and the failure raised once all is kept."""
from __future__ import annotations

import json

import pytest

from dnnlab.core.errors import DnnlabError
from dnnlab.core.outputs import Outputs
from dnnlab.core.plots import plt, save
from dnnlab.core.table import Table
from dnnlab.run.results import Results
from dnnlab.run.runtime import Run, emit
from dnnlab.run.settings import WandbConfig, WandbMode
from dnnlab.run.tracking import MIRROR, Tracker


def _run(tmp_path) -> Run:
    tracker = Tracker(WandbConfig(mode=WandbMode("disabled")), tmp_path, job_type="unit",
                      name="unit", config={})
    return Run(tmp_path, Results(tmp_path), tracker)


def test_emit_writes_every_output_then_fails(tmp_path, capsys):
    run = _run(tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = save(fig, tmp_path / "p.png")
    table = Table("rows", ["a", "b"], [[1, "x"]], title="the rows")
    out = Outputs({"n": 3}, [table], {"plot": png}, show=[table, "a [bold]line[/]"],
                  failure="the check failed")
    with run.tracker, pytest.raises(DnnlabError, match="^the check failed$"):
        emit(out, run)
    assert Results.read(tmp_path) == {"n": 3}  # kept before the failure is raised
    assert (tmp_path / "rows.csv").read_text().splitlines() == ["a,b", "1,x"]
    records = [json.loads(line) for line in (tmp_path / MIRROR).read_text().splitlines()]
    assert {"rows": {"_type": "table", "path": "rows.csv"}} in records
    assert {"plot": {"_type": "image", "path": "p.png"}} in records
    shown = capsys.readouterr().out
    assert shown.index("the rows") < shown.index("a line") < shown.index(
        f"results: {tmp_path / 'results.json'}")


def test_a_footer_names_its_own_path(tmp_path, capsys):
    run = _run(tmp_path)
    with run.tracker:
        assert emit(Outputs({"ok": True}, footer="report: {path}!"), run) is run.results
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'results.json'}!"
