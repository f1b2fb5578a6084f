"""Seeds as replicates and sweeps that can be re-run, through the real pipeline: a 2 x 3 sweep
(`-m model.pool.beta=2,inf seed=0,1,2`) summarized per beta with Student-t intervals, the W&B
summary run's groups table read back from its offline files, and the same command re-run into
the same sweep dir: finished jobs skipped (no checkpoint rewritten), an interrupted one resumed,
a lost one run again."""
from __future__ import annotations

import json
import math

import pytest

from tests.conftest import is_png, run_pipeline
from tests.wandb_reader import find_runs, summarize

ARGS = ["model.pool.beta=2,inf", "seed=0,1,2", "trainer.epochs=1", "trainer.progress=false",
        "trainer.probe_every=0"]


def _table(run_file, key: str) -> dict:
    """A wandb.Table logged under `key`, from the offline run's files."""
    (path,) = (run_file.parent / "files" / "media" / "table").glob(f"{key}_*.table.json")
    return json.loads(path.read_text())


@pytest.mark.slow  # 23 s: a 2x3 sweep run twice (make test stays under 10 minutes)
def test_a_replicated_sweep_and_its_rerun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_pipeline("train", *ARGS, f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((sweep / "summary.json").read_text())
    jobs = summary["jobs"]
    assert [j["seed"] for j in jobs] == [0, 1, 2, 0, 1, 2] and summary["failed"] == []
    assert [g["key"] for g in summary["groups"]] == [{"model.pool.beta": 2},
                                                     {"model.pool.beta": "inf"}]
    for g, mine in zip(summary["groups"], (jobs[:3], jobs[3:])):
        acc = [j["test_accuracy"] for j in mine]
        m = g["metrics"]["test_accuracy"]
        assert g["n"] == 3 and math.isclose(m["mean"], sum(acc) / 3)
        assert m["ci95"][0] <= min(acc) <= max(acc) <= m["ci95"][1] or m["std"] == 0
        assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]
        assert set(g["metrics"]) == {"test_accuracy", "best_val_accuracy", "grad_entropy",
                                     "argmax_mass"}
    (cmp,) = [c for c in summary["comparisons"] if c["metric"] == "test_accuracy"]
    assert cmp["significant"] in (True, False) and 0 <= cmp["p"] <= 1
    assert is_png(sweep / "summary.png")
    (run,) = find_runs(sweep / "wandb")
    table = _table(run, "groups")
    cols = table["columns"]
    assert cols[:4] == ["model.pool.beta", "log10_beta", "n", "seeds"]
    assert [r[cols.index("n")] for r in table["data"]] == [3, 3]
    assert [r[cols.index("seeds")] for r in table["data"]] == ["0,1,2", "0,1,2"]
    assert math.isclose(table["data"][0][cols.index("test_accuracy_mean")],
                        summary["groups"][0]["metrics"]["test_accuracy"]["mean"])
    assert "significant" in cols and summarize(run)["config"]["groups"] == 2

    # the same command again: every job is done with the same config -> skipped
    stamps = {j: (sweep / str(j) / "checkpoint.pt").stat().st_mtime_ns for j in range(6)}
    (sweep / "4" / "results.json").unlink()  # a job whose results were lost: run again
    (sweep / "4" / "checkpoint.pt").unlink()
    five = json.loads((sweep / "5" / "results.json").read_text())  # killed after its checkpoint
    (sweep / "5" / "results.json").write_text(json.dumps(five | {"status": "interrupted"}))
    again = run_pipeline("train", *ARGS, f"hydra.sweep.dir={sweep}", multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("nothing to do") == 4, again.stdout[-3000:]
    assert {j: (sweep / str(j) / "checkpoint.pt").stat().st_mtime_ns
            for j in range(6) if j != 4} == {j: t for j, t in stamps.items() if j != 4}
    after = json.loads((sweep / "summary.json").read_text())
    assert [j["status"] for j in after["jobs"]] == ["done"] * 6
    assert after["jobs"][4]["test_accuracy"] == jobs[4]["test_accuracy"]  # deterministic
    assert after["jobs"][5]["test_accuracy"] == jobs[5]["test_accuracy"]  # resumed, finished
    assert [g["n"] for g in after["groups"]] == [3, 3]
