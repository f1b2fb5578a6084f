"""dnnlab.opcount.outputs: what one count hands run_job (results, tables, the plot, the
terminal's views, and the failure when fvcore disagrees and that should fail the job)."""
from __future__ import annotations

from types import SimpleNamespace

from rich.tree import Tree
from torch import nn

from dnnlab.core.table import Table
from dnnlab.opcount.costs import CostOutputs
from dnnlab.opcount.experiment import run
from dnnlab.opcount.outputs import outputs


def _settings(fail: bool) -> SimpleNamespace:
    return SimpleNamespace(show_depth=1, show_rows=5, fail_on_mismatch=fail)


def test_outputs_of_a_count(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    result = run(model, [1, 1, 8, 8], name="tiny", reconcile_counts=True)
    costs = CostOutputs(results={"roofline": {"x": 1}}, lines=["a cost line"])
    out = outputs(result, costs, _settings(fail=True), tmp_path)
    assert out.results["roofline"] == {"x": 1}
    assert out.results["totals"] == result.to_dict()["totals"]
    assert out.images == {"per_layer": tmp_path / "per_layer.png"}
    assert out.images["per_layer"].exists()
    keys = [t.key for t in out.tables]
    assert len(keys) == len(set(keys)) == len(result.tables()) + 1  # + the rollup
    assert isinstance(out.show[0], Tree) and isinstance(out.show[2], Table)
    assert out.show[-1] == "a cost line" and result.mode_line() in out.show
    assert out.summary == result.summary()
    assert result.reconciled is True and out.failure is None  # fvcore agrees: nothing to fail


def test_a_mismatch_fails_only_when_asked(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    result = run(model, [1, 1, 8, 8], name="tiny", reconcile_counts=True)
    monkeypatch.setattr(type(result), "reconciled", property(lambda self: False))
    assert outputs(result, CostOutputs(), _settings(fail=False), tmp_path).failure is None
    failure = outputs(result, CostOutputs(), _settings(fail=True), tmp_path).failure
    assert failure.startswith("conv/linear counts differ from fvcore at 0 rows")
