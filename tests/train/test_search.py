"""experiment=search: dnnlab's Optuna sweeper (Optuna >= 4, ask/tell) over the learning rate and
a conditional beta (a log interval or inf), maximizing best_val_accuracy; the study in SQLite in
the sweep dir, continued by the same command without repeating a trial and resuming an
interrupted one in its job dir; pruning on the median of the epochs' val accuracy, on the basic
launcher, joblib and submitit; a failed trial recorded and the search going on; the trials,
best trial and importances in the sweep's W&B summary run and in optuna-dashboard's API; bad
input one line each. Every search runs through the real pipeline."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, run_pipeline
from tests.wandb_reader import find_runs, summarize

ARGS = ["experiment=search", "trainer.epochs=1", "trainer.progress=false",
        "trainer.probe_every=0", "wandb.mode=disabled"]
# pruning: 3 short epochs, a learning rate range wide enough that some trials are clearly bad,
# the median pruner from the 3rd trial on and from the first epoch on
PRUNE = ["experiment=search", "trainer.epochs=3", "trainer.limit_batches=5",
         "trainer.progress=false", "trainer.probe_every=0",
         "optimizer.lr=tag(log,interval(1e-5,1))",
         "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_args.median.n_startup_trials=2",
         "hydra.sweeper.pruner_args.median.n_warmup_steps=0"]


def _study(sweep):
    return optuna.load_study(study_name="search", storage=f"sqlite:///{sweep / 'optuna.db'}")


def _params(sweep) -> list[tuple]:
    """Each trial's drawn parameters, as its job got them (its overrides), in trial order."""
    return [tuple(o for o in t.user_attrs["dnnlab:overrides"]
                  if o.split("=")[0] in ("optimizer.lr", "model.pool.beta"))
            for t in _study(sweep).trials]


def _results(sweep, job: int) -> dict:
    return json.loads((sweep / str(job) / "results.json").read_text())


@pytest.mark.slow  # 36 s of subprocess searches: make test stays under 10 minutes
def test_search_maximizes_best_val_accuracy_and_resumes_with_its_trials(tmp_path):
    sweep = tmp_path / "search"
    proc = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    vals = [_results(sweep, j)["best_val_accuracy"] for j in range(3)]
    assert best["best_value"] == max(vals)  # the objective: never a test metric
    assert set(best["best_params"]) == {"optimizer.lr", "model.pool.beta"}
    summary = json.loads((sweep / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done"] * 3
    assert len(summary["groups"]) == 3 and all(g["n"] == 1 for g in summary["groups"])
    assert set(summary["groups"][0]["key"]) == {"optimizer.lr", "model.pool.beta"}
    # the same command again (as after a kill): the study goes on with its 3 trials
    again = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-3000:]
    study = _study(sweep)
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == [0, 1, 2, 3, 4]
    assert study.best_value == max(_results(sweep, j)["best_val_accuracy"] for j in range(5))
    assert len(json.loads((sweep / "summary.json").read_text())["jobs"]) == 5
    # a continuation never repeats a trial: 5 distinct parameter sets, then 7
    assert len(set(_params(sweep))) == 5
    third = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert third.returncode == 0, third.stderr[-3000:]
    params = _params(sweep)
    assert len(params) == 7 and len(set(params)) == 7, params
    for j, t in enumerate(_study(sweep).trials):  # each trial's job got its own overrides
        ov = yaml.safe_load((sweep / str(j) / ".hydra" / "overrides.yaml").read_text())
        assert t.user_attrs["dnnlab:job"] == j and ov[:2] == list(params[j])
        assert not any("DNNLAB_" in o for o in ov)  # the trial's link is no config key


def _search_with_pruning(sweep, *extra: str) -> subprocess.CompletedProcess:
    proc = run_pipeline("train", *PRUNE, "hydra.sweeper.n_trials=8", f"hydra.sweep.dir={sweep}",
                        *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _check_pruned(sweep) -> list[int]:
    """The pruned trials (>= 1), each one's job dir, W&B-free record and study state agreeing."""
    study = _study(sweep)
    states = {t.number: t.state.name for t in study.trials}
    assert len(states) == 8 and set(states.values()) <= {"COMPLETE", "PRUNED"}
    pruned = [n for n, s in states.items() if s == "PRUNED"]
    assert pruned, states
    summary = json.loads((sweep / "summary.json").read_text())
    for t in study.trials:
        res = _results(sweep, t.user_attrs["dnnlab:job"])
        # every epoch reported to the study through its storage, by the job's own process
        assert t.intermediate_values == {h["epoch"]: h["val_accuracy"] for h in res["history"]}
        if t.state.name == "PRUNED":
            assert res["status"] == "pruned" and "test_accuracy" not in res
            assert res["pruned_epoch"] == max(t.intermediate_values) == len(res["history"]) - 1
            assert len(res["history"]) < 3  # stopped at the end of an epoch
            assert summary["jobs"][t.user_attrs["dnnlab:job"]]["status"] == "pruned"
        else:
            assert res["status"] == "done" and len(res["history"]) == 3
            assert t.value == res["best_val_accuracy"]
    return pruned


def _table(run_file, key: str) -> dict:
    (path,) = (run_file.parent / "files" / "media" / "table").glob(f"{key}_*.table.json")
    return json.loads(path.read_text())


def _get(app, path: str) -> dict:
    """GET `path` from a WSGI app, in-process (no server, no browser); the JSON it answers."""
    environ = {"PATH_INFO": path.split("?")[0], "QUERY_STRING": path.partition("?")[2],
               "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


@pytest.mark.slow  # 19 s in a subprocess: the fast suite keeps its 10 minutes
def test_pruning_the_wandb_summary_and_the_dashboard(tmp_path):
    sweep = tmp_path / "search"
    _search_with_pruning(sweep, "wandb.mode=offline")
    pruned = _check_pruned(sweep)
    search = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # W&B: a pruned trial's run says so (summary and tag)
    study = _study(sweep)
    first = study.trials[pruned[0]]
    (run,) = find_runs(sweep / str(first.user_attrs["dnnlab:job"]) / "wandb")
    got = summarize(run)
    assert got["summary"]["status"] == "pruned" and "pruned" in list(got["run"].tags)
    assert got["summary"]["pruned_epoch"] == max(first.intermediate_values) and got["exit"] == 0
    # the sweep's summary run: the trials table, the best trial and the importances
    (summary_run,) = find_runs(sweep / "wandb")
    table = _table(summary_run, "trials")
    cols = table["columns"]
    assert cols == ["trial", "job", "state", "optimizer.lr", "model.pool.beta", "value",
                    "pruned_at_epoch"]
    assert [r[cols.index("state")] for r in table["data"]] == [t.state.name
                                                              for t in study.trials]
    assert [r[cols.index("pruned_at_epoch")] for r in table["data"]] == [
        max(t.intermediate_values) if t.state.name == "PRUNED" else None for t in study.trials]
    assert [r[cols.index("optimizer.lr")] for r in table["data"]] == [
        t.params["optimizer.lr"] for t in study.trials]
    s = summarize(summary_run)["summary"]
    assert s["best_trial"] == study.best_trial.number == search["best_trial"]
    assert s["best_value"] == study.best_value
    imp = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert {k[len("importance/"):]: v for k, v in s.items() if k.startswith("importance/")} \
        == pytest.approx(dict(imp)) and set(imp) >= {"optimizer.lr"}
    imp_table = _table(summary_run, "importances")
    assert {r[0]: r[1] for r in imp_table["data"]} == pytest.approx(dict(imp))
    # optuna-dashboard's app on the study's storage, through its HTTP API
    from optuna_dashboard import wsgi

    app = wsgi(f"sqlite:///{sweep / 'optuna.db'}")
    (st,) = _get(app, "/api/studies")["study_summaries"]
    assert st["study_name"] == "search" and st["directions"] == ["maximize"]
    detail = _get(app, f"/api/studies/{st['study_id']}")
    assert [t["number"] for t in detail["trials"]] == list(range(8))
    assert [t["state"] for t in detail["trials"]] == [t.state.name.capitalize()
                                                     for t in study.trials]
    assert [b["number"] for b in detail["best_trials"]] == [study.best_trial.number]
    assert {p["name"] for p in detail["union_search_space"]} >= {"optimizer.lr",
                                                                  "model.pool.beta:branch"}


@pytest.mark.slow
def test_pruning_on_joblib(tmp_path):
    """Trials in joblib's worker processes, two at a time: each finds its trial through the
    storage, reports to it and is pruned there."""
    sweep = tmp_path / "search"
    _search_with_pruning(sweep, "wandb.mode=disabled", "hydra/launcher=local",
                         "hydra.sweeper.n_jobs=2")
    _check_pruned(sweep)


@pytest.mark.slow
def test_a_search_on_submitit(tmp_path):
    """The SLURM launcher's code path (submitit, local processes): trials two at a time, the
    hyperband pruner, a spec typed on the command line."""
    sweep = tmp_path / "search"
    proc = run_pipeline("train", *PRUNE, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                        "hydra.sweeper.pruner=hyperband",
                        "model.pool.beta={low:1,high:64,log:true,or:[inf,0.5]}",
                        "hydra/launcher=slurm_local", "wandb.mode=disabled",
                        f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(sweep)
    assert [t.state.name in ("COMPLETE", "PRUNED") for t in study.trials] == [True] * 4
    for t in study.trials:
        res = _results(sweep, t.user_attrs["dnnlab:job"])
        assert t.intermediate_values == {h["epoch"]: h["val_accuracy"] for h in res["history"]}
        assert res["status"] == {"COMPLETE": "done", "PRUNED": "pruned"}[t.state.name]
        if "model.pool.beta" in t.params:  # the interval's branch
            assert res["beta"] == t.params["model.pool.beta"] and 1 <= res["beta"] <= 64
        else:
            assert str(res["beta"]) == t.params["model.pool.beta:branch"] in ("inf", "0.5")


@pytest.mark.slow
def test_an_interrupted_trial_resumes_in_its_job_dir(tmp_path):
    """kill -9 during a trial's training: the next run relaunches that trial into its job dir,
    where trainer.resume=auto continues it from its checkpoint; then the new trials."""
    sweep = tmp_path / "search"
    args = [*PRUNE[:-3], "hydra.sweeper.pruner=none", "wandb.mode=disabled",
            f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", WANDB_SILENT="true")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", *args,
                             "hydra.sweeper.n_trials=2"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            sweep / "0" / "checkpoint.pt").exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [t.state.name for t in _study(sweep).trials] == ["RUNNING"]
    first = _study(sweep).trials[0].user_attrs["dnnlab:overrides"]
    again = run_pipeline("train", *args, "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr[-3000:]
    study = _study(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == [0, 1]
    assert study.trials[0].user_attrs["dnnlab:overrides"] == first
    mirror = [json.loads(x) for x in (sweep / "0" / "metrics.jsonl").read_text().splitlines()]
    assert any("trainer/resumed_from_epoch" in r for r in mirror)  # resumed, not restarted
    res = _results(sweep, 0)
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2]
    assert study.trials[0].value == res["best_val_accuracy"]


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path):
    sweep = tmp_path / "search"
    proc = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=6", "model.pool.beta=choice(4,-1)",
                        f"hydra.sweep.dir={sweep}")
    study = _study(sweep)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "FAIL" in states and "COMPLETE" in states
    summary = json.loads((sweep / "summary.json").read_text())
    failed = [j["job"] for j in summary["jobs"] if j["status"] == "failed"]
    assert failed == [i for i, s in enumerate(states) if s == "FAIL"] == summary["failed"]
    assert all("model.pool.beta=-1" in summary["jobs"][j]["error"] for j in failed)
    # every trial ran; the failures are one line each at the end, and the exit status says so
    assert proc.returncode == 1 and (sweep / "optimization_results.yaml").exists()
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: job")]
    assert len(lines) == len(failed) and all(x.endswith("expected a number in (0, inf]")
                                             for x in lines), proc.stderr[-2000:]


@pytest.mark.parametrize("overrides, says", [
    (["hydra.sweeper.pruner=sometimes"],
     "hydra.sweeper.pruner='sometimes': expected one of none, median, hyperband"),
    pytest.param(["optimizer.lr=0.001", "model.pool.beta=4"],
                 "hydra.sweeper.params: the search space is empty", marks=pytest.mark.slow),
    pytest.param(["model.pool.beta={low:64,high:32,log:true,or:[inf]}"],
                 "model.pool.beta={low:64,high:32,log:true,or:[inf]}: low=64.0 >= high=32.0",
                 marks=pytest.mark.slow),
    (["hydra.sweeper.storage=sqlite:////proc/no/such/dir/optuna.db"],
     "hydra.sweeper.storage=sqlite:////proc/no/such/dir/optuna.db: cannot open it"),
])
def test_bad_input_is_one_line(tmp_path, overrides, says):
    proc = run_pipeline("train", *ARGS, "hydra.sweeper.n_trials=1", *overrides,
                        f"hydra.sweep.dir={tmp_path / 'search'}")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), proc.stderr[-3000:]
    assert not (tmp_path / "search" / "0").exists()  # no trial ran


def test_a_job_reports_to_its_trial_through_the_storage(tmp_path, monkeypatch):
    """In-process, on a real SQLite study: the link a job builds from the sweeper's variables
    reports each epoch once and says when the stored pruner stops it; the loop callback raises
    Pruned then."""
    from dnnlab.core.errors import ConfigError
    from dnnlab.run.trial import PRUNER, STORAGE, STUDY, TRIAL, TrialLink, make_pruner, open_storage
    from dnnlab.train.records import EpochEnd
    from dnnlab.train.trial import Pruned, ReportToTrial

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.set_user_attr(PRUNER, {"name": "median",
                                 "args": {"n_startup_trials": 1, "n_warmup_steps": 0}})
    done = study.ask()
    done.report(0.5, 0)
    study.tell(done, 0.5)
    good, bad = study.ask(), study.ask()
    monkeypatch.setenv(STUDY, "s")
    monkeypatch.setenv(STORAGE, url)
    for trial, acc, stops in ((good, 0.9, False), (bad, 0.1, True)):
        monkeypatch.setenv(TRIAL, str(trial.number))
        link = TrialLink.from_env()
        cb = ReportToTrial(link.report)
        end = EpochEnd({"epoch": 0, "val_accuracy": acc}, {}, 10, [])
        if stops:
            with pytest.raises(Pruned) as pruned:
                cb.on_epoch(end)
            assert pruned.value.epoch == 0 and pruned.value.value == acc
        else:
            cb.on_epoch(end)
        assert link.report(0, 0.7) is stops  # a resumed epoch is not reported twice
        assert _stored(url, trial.number).intermediate_values == {0: acc}
    monkeypatch.delenv(TRIAL)
    assert TrialLink.from_env() is None
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner='x': expected one of"):
        make_pruner("x")
    with pytest.raises(ConfigError, match=r"pruner_args.median=\{'bogus': 1\}: not accepted"):
        make_pruner("median", {"bogus": 1})
    assert type(make_pruner("hyperband", {"min_resource": 1})).__name__ == "HyperbandPruner"
    with pytest.raises(ConfigError, match="hydra.sweeper.storage=nosuch://x: cannot open it"):
        open_storage("nosuch://x")


def _stored(url: str, number: int):
    return optuna.load_study(study_name="s", storage=url).trials[number]


@pytest.mark.parametrize("params, arguments, says", [
    ({"model.pool.beta": {"low": 32, "high": 0.5, "log": True, "or": ["inf"]}}, [],
     "hydra.sweeper.params.model.pool.beta: low=32.0 >= high=0.5"),
    ({"model.pool.beta": {"low": 0.5, "high": "inf"}}, [], "expected finite bounds"),
    ({"model.pool.beta": {"low": 0, "high": 4, "log": True}}, [], "a log scale needs low > 0"),
    ({"model.pool.beta": {"low": 1, "high": 4, "step": 1}}, [], "unknown key(s) step"),
    ({"model.pool.beta": {"low": 1}}, [], "a spec needs low and high"),
    ({"optimizer.lr": "interval(0.1, 0.01)"}, [], "low=0.1 >= high=0.01"),
    ({"optimizer.lr": "tag(log, interval(1e-4, 1e-1))"}, ["optimizer.lr=0.01"],
     "hydra.sweeper.params: the search space is empty"),
    ({}, ["seed=range(3, 3)"], "seed=range(3, 3): an empty range"),
])
def test_a_bad_space_names_its_key(params, arguments, says):
    """In-process: the space's errors (the subprocess path of each is the one above)."""
    from dnnlab.core.errors import ConfigError
    from hydra_plugins.dnnlab_search.space import Space

    with pytest.raises(ConfigError) as err:
        Space.parse(params, arguments)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_space_draws_its_kinds():
    """choice, int range, log interval, a spec with `or`: each trial's overrides in order, the
    fixed ones after, every value inside its space (a real in-memory Optuna study)."""
    from hydra_plugins.dnnlab_search.space import Space, typed

    space = Space.parse({"optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
                         "model.pool.beta": {"low": 0.5, "high": 32, "log": True,
                                             "or": ["inf"]}},
                        ["seed=range(0, 6, 2)", "data.batch_size=choice(32, 64)",
                         "trainer.epochs=2"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        ov = dict(o.split("=", 1) for o in space.suggest(study.ask()))
        assert list(ov) == ["optimizer.lr", "model.pool.beta", "seed", "data.batch_size",
                            "trainer.epochs"] and ov["trainer.epochs"] == "2"
        assert 1e-4 <= float(ov["optimizer.lr"]) <= 1e-1 and typed(ov["seed"]) in (0, 2, 4)
        assert ov["model.pool.beta"] == "inf" or 0.5 <= float(ov["model.pool.beta"]) <= 32
        assert ov["data.batch_size"] in ("32", "64")
        seen.add(ov["model.pool.beta"] == "inf")
    assert seen == {True, False}  # both branches drawn


@settings(max_examples=150, deadline=None)
@given(low=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-1.7e308, 5e-324]),
       high=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1.7e308]),
       log=st.booleans())
def test_a_spec_is_accepted_exactly_when_its_interval_is(low, high, log):
    """Any bounds (NaN, +-inf, ties, tiny and huge ones): a spec parses iff low < high with a
    finite width (and low > 0 on a log scale), and then every draw is inside or the `or`
    value."""
    import math

    from dnnlab.core.errors import ConfigError
    from hydra_plugins.dnnlab_search.space import Space

    spec = {"model.pool.beta": {"low": low, "high": high, "log": log, "or": ["inf"]}}
    ok = math.isfinite(high - low) and low < high and (low > 0 or not log)
    try:
        space = Space.parse(spec, [])
    except ConfigError as err:
        assert not ok and str(err).startswith("hydra.sweeper.params.model.pool.beta: ")
        return
    assert ok
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        (ov,) = space.suggest(study.ask())
        value = ov.split("=", 1)[1]
        assert value == "inf" or low <= float(value) <= high
