"""Tracker: one real W&B run (offline) per job, mirrored in the run dir; read back from files."""
from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from dnnlab import tracking
from dnnlab.config import JobConfig, to_settings
from dnnlab.plots import plt, save
from dnnlab.table import Table
from tests.wandb_reader import find_runs, summarize


def _cfg(mode="offline", **wandb):
    cfg = OmegaConf.structured(JobConfig)
    cfg.wandb.mode = mode
    for k, v in wandb.items():
        cfg.wandb[k] = v
    cfg.paths.root_dir, cfg.paths.data_dir, cfg.paths.output_dir = ".", "data", "."
    return cfg


def test_offline_run_holds_what_was_logged(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    png = save(fig, tmp_path / "p.png")
    with tracking.Tracker(_cfg(tags="hello", project="dnnlab-test"), "unit",
                          run_dir=tmp_path) as tr:
        tr.log({"loss": 0.5}, step=1)
        tr.log({"loss": 0.25, "beta": math.inf}, step=2)
        tr.table(Table("rows", ["beta", "gap"], [[1.0, 0.1], [math.inf, 0.0]]))
        tr.image("plot", png)
        tr.results["history"] = [1, 2]
        tr.summary(final=0.25, beta=math.inf, nested={"a": math.inf})
    (run,) = find_runs(tmp_path)
    w = summarize(run)
    assert w["run"].job_type == "unit" and list(w["run"].tags) == ["hello"]
    assert w["run"].project == "dnnlab-test"
    assert w["config"]["wandb"]["mode"] == "offline"  # the resolved config, enums as names
    losses = [h["loss"] for h in w["history"] if "loss" in h]
    assert losses == [0.5, 0.25]
    assert w["summary"]["final"] == 0.25
    assert w["summary"]["rows/_type"] == "table-file" and w["summary"]["plot/_type"] == "image-file"
    res = json.loads((tmp_path / "results.json").read_text())
    assert res == {"history": [1, 2], "final": 0.25, "beta": "inf", "nested": {"a": "inf"}}
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[1] == {"loss": 0.25, "beta": "inf", "_step": 2}
    assert (tmp_path / "rows.csv").read_text().splitlines()[2] == "inf,0.0"


def test_disabled_mode_writes_local_files_only(tmp_path):
    with tracking.Tracker(_cfg("disabled"), "unit", run_dir=tmp_path) as tr:
        assert tr.run is None or tr.run.disabled
        tr.summary(x=1)
    assert find_runs(tmp_path) == []
    assert json.loads((tmp_path / "results.json").read_text()) == {"x": 1}


def test_online_without_network_falls_back_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(tracking, "_WARNED", False)
    with tracking.Tracker(_cfg("online", init_timeout=5), "unit", run_dir=tmp_path) as tr:
        tr.summary(done=True)
    err = capsys.readouterr().err
    assert err.count("warning: W&B could not start in mode 'online'") == 1
    assert json.loads((tmp_path / "results.json").read_text()) == {"done": True}


def test_write_json_is_atomic_and_json_safe(tmp_path):
    tracking.write_json(tmp_path / "r.json", {"v": [math.nan, -math.inf]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"v": ["nan", "-inf"]}
    assert not (tmp_path / "r.json.tmp").exists()


def test_run_dir_and_sweep_info_outside_hydra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.run_dir_of() == tmp_path
    assert tracking.sweep_info() == (False, None, None)


@pytest.mark.parametrize("tags, expect", [("hello", ["hello"]), (["a", "b"], ["a", "b"]),
                                          (None, [])])
def test_a_single_tag_string_is_one_tag(tags, expect):
    cfg = _cfg()
    cfg.wandb.tags = tags
    assert to_settings(cfg).wandb.tags == expect
    assert tracking._tags(tags) == expect
