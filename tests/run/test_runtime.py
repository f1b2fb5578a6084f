"""The runtime around every job: typed settings, one-line errors, exit codes, Hydra's grammar.

In-process: a tiny Hydra app (its own config dir and schema, written in tmp_path) run through
`launch`, as `python -m pipelines.<name>` runs a pipeline.

`emit`: a job's Outputs written by the runner: results.json, the tracker's files (CSV,
metrics.jsonl), the terminal in order, and the failure raised once all is kept.

trainer.resume=false into a run dir that holds a run (set_aside): the new run starts over there,
the old one's files set aside in <run dir>/replaced-<time>/ (said in one line), nothing of it left
where the new run writes: metrics.jsonl holds one run's steps, W&B's live dir one offline run."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from dataclasses import dataclass

import pytest
from hydra.core.global_hydra import GlobalHydra

from dnnlab.core.beta import BETA_INF_FLOAT
from dnnlab.core.errors import ConfigError, DnnlabError, ShapeError
from dnnlab.core.outputs import Outputs
from dnnlab.core.plots import plt, save
from dnnlab.core.table import Table
from dnnlab.run import cli
from dnnlab.run.results import Results
from dnnlab.run.runtime import Run, emit
from dnnlab.run.settings import WandbConfig, WandbMode
from dnnlab.run.tracking import MIRROR, Tracker
from tests.wandb_reader import find_runs, summarize

APP = '''
from dataclasses import dataclass, field
from enum import Enum
import hydra
from hydra.core.config_store import ConfigStore
from dnnlab.run.settings import JobConfig
from dnnlab.core.errors import ShapeError, require
from dnnlab.run.runtime import run_job

class Mode(str, Enum):
    a = "a"
    b = "b"

@dataclass
class Inner:
    epochs: int = 2
    def __post_init__(self):
        require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")

@dataclass
class AppConfig(JobConfig):
    inner: Inner = field(default_factory=Inner)
    flag: bool = True
    fail: bool = False
    mode: Mode = Mode.a

ConfigStore.instance().store(name="app_schema", node=AppConfig)
SEEN = []

def job(settings, run):
    SEEN.append(settings)
    run.tracker.summary(epochs=settings.inner.epochs)
    run.results.update(epochs=settings.inner.epochs)
    if settings.fail:
        raise ShapeError("layer 'features.3' (Conv2d) cannot take input of shape [1, 2]")
    return settings.inner.epochs

@hydra.main(version_base="1.3", config_path="CONF", config_name="app")
def main(cfg):
    return run_job(cfg, "app", job)
'''


@pytest.fixture
def app(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "group").mkdir(parents=True)
    (conf / "app.yaml").write_text(textwrap.dedent(f"""
        defaults:
          - app_schema
          - group: a
          - _self_
        wandb: {{mode: disabled}}
        paths: {{root_dir: ., data_dir: data, output_dir: .}}
        hydra:
          run: {{dir: {tmp_path}/run}}
          sweep: {{dir: {tmp_path}/multi}}
          callbacks: {{failed_jobs: {{_target_: dnnlab.run.sweep_dir.FailedJobs}}}}
    """))
    (conf / "group" / "a.yaml").write_text("# @package _global_\nflag: true\n")
    (conf / "group" / "b.yaml").write_text("# @package _global_\nflag: false\n")
    name = f"dnnlab_test_app_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(APP.replace("CONF", str(conf)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(*argv):
        monkeypatch.setattr(sys, "argv", [name, *argv])
        GlobalHydra.instance().clear()
        try:
            cli.launch(name)
            return 0
        except SystemExit as e:
            return e.code
        finally:
            GlobalHydra.instance().clear()

    run.module = lambda: sys.modules[name]
    run.dir = tmp_path
    return run


def _one_line(err: str) -> str:
    lines = [s for s in err.strip().splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_a_good_run_gets_typed_settings(app, capsys):
    assert app("inner.epochs=3") == 0
    (settings,) = app.module().SEEN
    assert type(settings).__name__ == "AppConfig" and settings.inner.epochs == 3
    assert json.loads((app.dir / "run" / "results.json").read_text()) == {"status": "done",
                                                                         "epochs": 3}


@pytest.mark.parametrize("override, code, needle", [
    ("inner.epochs=abc", 2, "inner.epochs: Value 'abc' of type 'str' could not be converted"),
    ("inner.epochs=12.5", 2, "inner.epochs: Value '12.5'"),
    ("flag=maybe", 2, "flag: Value 'maybe' is not a valid bool"),
    ("mode=x", 2, "mode: Invalid value 'x', expected one of [a, b]"),  # [..] is not markup
    ("inner.epochs=0", 1, "inner.epochs=0: must be >= 1"),
    ("group=nope", 2, "group=nope: no such config (options: a, b)"),
    ("nokey=1", 2, "Could not override 'nokey'"),
    ("+inner.epoch=3", 2, "inner.epoch: no such key in Inner (did you mean epochs?)"),
    ("fail=true", 1, "layer 'features.3' (Conv2d) cannot take input"),
    ("inner.epochs=[", 2, "inner.epochs=["),
])
def test_user_errors_are_one_line(app, capsys, override, code, needle):
    assert app(override) == code
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: ") and needle in line, line


def test_hydra_grammar_works_without_pre_parsing(app, capsys):
    assert app("-m", "group=glob(*)", "inner.epochs=choice(1,2)") == 0
    assert sorted((s.flag, s.inner.epochs) for s in app.module().SEEN) == [
        (False, 1), (False, 2), (True, 1), (True, 2)]


def test_a_failed_job_in_a_multirun_is_one_error_line(app, capsys):
    assert app("-m", "fail=false,true") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1
    assert len(app.module().SEEN) == 2  # the other job ran


def test_full_error_env_gives_the_traceback(app, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="Error merging override inner.epochs=abc"):
        app("inner.epochs=abc")


def test_describe_sorts_user_errors_from_bugs():
    assert cli.describe(ConfigError("x=1: bad")) == ("x=1: bad", 1)
    assert cli.describe(ShapeError("layer 'a'")) == ("layer 'a'", 1)
    assert cli.describe(RuntimeError("bug")) is None


def test_keyboard_interrupt_exits_130(monkeypatch, capsys, tmp_path):
    (tmp_path / "dnnlab_test_ctrl_c.py").write_text("def main():\n    raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as e:
        cli.launch("dnnlab_test_ctrl_c")
    assert e.value.code == 130
    assert "interrupted" in _one_line(capsys.readouterr().err)


@dataclass
class _Tiny:
    n: int = 1


def test_settings_of_names_the_section_key():
    from dnnlab.run.config import settings_of

    assert settings_of(_Tiny, {"n": 3}, "conv").n == 3
    with pytest.raises(ConfigError, match=r"^conv\.n: Value 'x'"):
        settings_of(_Tiny, {"n": "x"}, "conv")
    with pytest.raises(ConfigError, match=r"conv\.m"):
        settings_of(_Tiny, {"m": 1}, "conv")


def test_sweep_summary_callback_records_failures_and_logs_to_wandb(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from dnnlab.run.train_sweep import SweepSummary
    from tests.wandb_reader import find_runs, summarize

    sweep = tmp_path / "multi"
    for job, acc in ((0, 0.9), (1, None)):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- model.pool.beta={job}\n")
        if acc is not None:
            (sweep / "0" / "results.json").write_text(json.dumps(
                {"beta": 4.0, "test_accuracy": acc, "grad_entropy": 0.5, "argmax_mass": 0.6}))

    def config(job: int):
        return OmegaConf.create({
            "wandb": {"mode": "offline", "project": "dnnlab-test", "group": None},
            "hydra": {"mode": "RunMode.MULTIRUN", "job": {"name": "train"},
                      "runtime": {"output_dir": str(sweep / str(job))},
                      "sweep": {"dir": str(sweep)}}})

    cb = SweepSummary()
    ok, bad = JobReturn(), JobReturn()
    ok.status, bad.status = JobStatus.COMPLETED, JobStatus.FAILED
    bad.return_value = ShapeError("layer 'head' cannot take input")
    cb.on_job_end(config(0), ok)
    cb.on_job_end(config(1), bad)
    failed = json.loads((sweep / "1" / "failed.json").read_text())
    assert failed["error"] == "ShapeError: layer 'head' cannot take input"
    cb.on_multirun_end(config(1))
    summary = json.loads((sweep / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done", "failed"] and summary["failed"] == [1]
    assert (sweep / "summary.png").exists()
    (run,) = find_runs(sweep)
    w = summarize(run)
    assert w["run"].job_type == "sweep_summary" and w["run"].run_group == "train-multi"
    assert w["summary"]["failed_jobs"] == 1 and w["summary"]["summary/_type"] == "table-file"
    SweepSummary().on_job_end(OmegaConf.create({"hydra": {"mode": "RUN"}}), ok)  # no-op


def test_a_locked_run_dir_names_its_holder_and_is_free_again(tmp_path):
    from dnnlab.run.lock import RunDirInUse, RunLock

    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
        with pytest.raises(RunDirInUse, match=rf"^run dir {tmp_path / 'run'} is in use by "
                                              rf"another run \(pid {os.getpid()}\)"):
            with RunLock(tmp_path / "run"):
                pass
    assert (tmp_path / "run" / ".lock").read_text() == ""
    with RunLock(tmp_path / "run"):  # taken again once released
        pass


def test_an_empty_multirun_is_one_line_and_leaves_no_sweep_dir(app, capsys):
    assert app("-m", "inner.epochs=range(1,1)") == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: the sweep launched no job") and not (app.dir / "multi").exists()


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


QUICK = ["trainer.progress=false"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a subprocess run of 13-18 s: make test stays under 10 min
def test_resume_false_replaces_the_old_run(pipeline, tmp_path):
    d = tmp_path / "run"
    first = pipeline("train", f"hydra.run.dir={d}", "trainer.epochs=1", *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    old = json.loads((d / "results.json").read_text())
    second = pipeline("train", f"hydra.run.dir={d}", "trainer.epochs=2", "trainer.resume=false",
                      "model.pool.beta=inf", *QUICK)
    assert second.returncode == 0, second.stderr[-3000:]
    (aside,) = d.glob("replaced-*")
    said = [ln for ln in second.stdout.splitlines() if "starting over" in ln]
    assert len(said) == 1 and str(aside) in said[0], second.stdout

    steps = [r["_step"] for r in _rows(d) if "_step" in r and "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one run's steps, once each
    epochs = [r["epoch"] for r in _rows(d) if "val/accuracy" in r]
    assert epochs == [0, 1]
    assert sum("test/accuracy" in r for r in _rows(d)) == 1
    new = json.loads((d / "results.json").read_text())
    assert str(new["beta"]) == "inf" and len(new["history"]) == 2

    (live,) = find_runs(d / "wandb")  # one W&B offline run where the new one writes
    assert summarize(live)["config"]["model"]["pool"]["beta"] == BETA_INF_FLOAT
    (kept,) = find_runs(aside / "wandb")  # the old run, whole, beside it
    assert kept.name != live.name
    assert json.loads((aside / "results.json").read_text()) == old
    assert len([r for r in _rows(aside) if "val/accuracy" in r]) == 1
