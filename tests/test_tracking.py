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
    assert w["run"].job_type == "unit" and list(w["run"].tags) == ["hello", "unit"]
    assert w["run"].display_name == "unit" and w["summary"]["beta"] == "inf"  # no Infinity
    assert w["summary"]["nested"] == {"a": "inf"} and w["exit"] == 0
    (art,) = [a for a in w["artifacts"] if a.type == "results"]  # results.json, ..., CSVs
    assert art.type == "results" and art.name == f"results-{w['run'].run_id}"
    assert sorted(c.path for c in art.manifest.contents) == ["metrics.jsonl", "results.json",
                                                             "rows.csv"]
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
    assert lines[2:] == [{"rows": {"_type": "table", "path": "rows.csv"}},
                         {"plot": {"_type": "image", "path": "p.png"}}]
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


@pytest.mark.parametrize("config, overrides, name", [
    ({"model": {"name": "smoothmax_cnn", "pool": {"beta": 4.0}}}, [],
     "train-smoothmax_cnn-beta4"),
    ({"model": {"name": "smoothmax_cnn", "pool": {"beta": "inf"}}},
     ["model.pool.beta=inf", "trainer.epochs=3", "hydra.run.dir=x", "wandb.mode=offline",
      "trainer.resume=true", "+model.builder.channels=[8,16,16]"],
     "train-smoothmax_cnn-betainf-epochs=3,channels=[8,16,16]"),
    ({"model": {"name": "cnn", "pool": {"beta": 0.5, "learnable": True}}},
     ["experiment=temperature_sweep"], "train-cnn-beta0.5-learnable"),
    ({"model": {"name": "alexnet"}}, ["model=alexnet", "count.batch_size=16"],
     "train-alexnet-batch_size=16"),
    ({}, ["beta.max=1e6"], "train-max=1e6"),
    ({}, ["real_nets=[{name:resnet18,input_shape:[2,3,32,32]}]"],
     "train-real_nets=[{name:resnet18,input..."),
])
def test_run_names_say_what_ran(config, overrides, name):
    assert tracking.run_name("train", config, overrides) == name
    assert len(tracking.run_name("x", {}, [f"k{i}=v" for i in range(60)])) == tracking.NAME_MAX


def test_run_tags_add_pipeline_model_and_experiment_once():
    assert tracking.run_tags("train", {"model": {"name": "cnn"}}, ["a", "train"]) == [
        "a", "train", "cnn"]
    assert tracking.run_tags("conv", {}, None) == ["conv"]


def _rows(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


def test_resume_continues_the_run_and_replays_what_the_local_copy_holds(tmp_path):
    with tracking.Tracker(_cfg(), "unit", run_dir=tmp_path) as tr:
        tr.define_metric("trainer/global_step")
        tr.define_metric("loss", step_metric="trainer/global_step", summary="min")
        tr.config_update(beta=math.inf, log10_beta=6.0)
        for s in range(1, 6):
            tr.log({"trainer/global_step": s, "loss": 1.0 / s}, step=s)
        tr.artifact("model", "model", [tmp_path / "metrics.jsonl"], metadata={"b": math.inf},
                    aliases=["best"])
        first = tr.run.id
    stored = json.loads((tmp_path / tracking.ID_FILE).read_text())
    assert stored["id"] == first and stored["name"] == "unit"
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a row cut by a kill
        f.write('{"loss": 0.1, "_st')
    with tracking.Tracker(_cfg(), "unit", run_dir=tmp_path, resume=True) as tr:
        assert tr.run.id == first
        assert tr.rewind(3) == 3  # steps 1-3 replayed into the (offline: new) file
        tr.log({"trainer/global_step": 4, "loss": 0.3}, step=4)
    kept = _rows(tmp_path / "metrics.jsonl")
    assert [r["_step"] for r in kept] == [1, 2, 3, 4] and kept[-1]["loss"] == 0.3
    dropped = (tmp_path / tracking.DISCARDED).read_text().splitlines()
    assert [json.loads(d)["_step"] for d in dropped[:2]] == [4, 5] and len(dropped) == 3
    runs = [summarize(r) for r in find_runs(tmp_path)]
    assert {w["run"].run_id for w in runs} == {first}
    new, old = sorted(runs, key=lambda w: len(w["history"]))  # the killed run had 5 rows
    assert [h["_step"] for h in new["history"]] == [1, 2, 3, 4]
    assert old["config"]["beta"] == "inf" and old["metrics"]["loss"].step_metric == (
        "trainer/global_step")
    assert [a.type for a in old["artifacts"]] == ["model", "results"]
    assert json.loads(old["artifacts"][0].metadata) == {"b": "inf"}


def test_a_fresh_run_in_the_same_dir_is_a_new_run(tmp_path):
    ids = []
    for _ in range(2):
        with tracking.Tracker(_cfg(), "unit", run_dir=tmp_path) as tr:
            ids.append(tr.run.id)
    assert ids[0] != ids[1]
    with tracking.Tracker(_cfg("disabled"), "unit", run_dir=tmp_path, resume=True) as tr:
        assert tr.rewind(0) == 0  # no W&B run: the local copy is still cut at the step
    assert (tmp_path / "metrics.jsonl").read_text() == ""
