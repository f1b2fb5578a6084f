"""dnnlab.run.train_job and dnnlab.run.report in process: the train pipeline's prepare and job
(debug=fast: a few batches of real digits) and the reproduce pipeline's sections, run through the
pipelines' own `main` as the command line runs them (the subprocess tests cover the same paths,
out of the coverage's sight)."""
from __future__ import annotations

import json
import sys

from hydra.core.global_hydra import GlobalHydra


def _main(module, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    GlobalHydra.instance().clear()
    try:
        return module.main()
    finally:
        GlobalHydra.instance().clear()


def test_train_job_in_process_writes_its_history_and_is_done_once(tmp_path, monkeypatch):
    import pipelines.train as train

    out = tmp_path / "run"
    _main(train, monkeypatch, "debug=fast", "trainer.epochs=2", "wandb.mode=disabled",
          f"hydra.run.dir={out}")
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "done" and len(res["history"]) == 2
    assert [h["epoch"] for h in res["history"]] == [0, 1]
    assert res["best_val_accuracy"] == max(h["val_accuracy"] for h in res["history"])
    # the same command again: nothing to do, the results unchanged
    _main(train, monkeypatch, "debug=fast", "trainer.epochs=2", "wandb.mode=disabled",
          f"hydra.run.dir={out}")
    assert json.loads((out / "results.json").read_text()) == res


def test_reproduce_in_process_reports_each_section_and_a_failed_one(tmp_path, monkeypatch):
    import pipelines.reproduce as reproduce

    out = tmp_path / "rep"
    _main(reproduce, monkeypatch, "sections=[smoothmax,train]", "train.betas=[4]",
          "train.epochs=1", "train.seeds=2", "wandb.mode=disabled", f"hydra.run.dir={out}")
    report = (out / "report.md").read_text()
    res = json.loads((out / "results.json").read_text())
    assert res["sections"] == {"smoothmax": "ok", "train": "ok"}, res["sections"]
    assert "## " in report and "beta" in report.lower()
    rows = json.loads((out / "train_temperature_sweep.json").read_text())["jobs"]
    assert [(r["beta"], r["seed"]) for r in rows] == [(4.0, 0), (4.0, 1)]

