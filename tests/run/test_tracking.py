"""Tracker: one real W&B run (offline) per job, mirrored in the run dir; read back from files.
Run names and tags from a pipeline's rule; the fall-back when online W&B does not answer."""
from __future__ import annotations

import json
import math
import socket
import threading

import pytest

from dnnlab.core.jsonio import read_json, write_json
from dnnlab.core.plots import plt, save
from dnnlab.core.table import Table
from dnnlab.run import naming, tracking
from dnnlab.run.results import Results
from dnnlab.run.resume import DISCARDED, replay
from dnnlab.run.settings import RunNameRule, WandbConfig, WandbMode
from tests.wandb_reader import find_runs, summarize


def _tracker(tmp_path, mode="offline", resume_id=None, **wandb):
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = WandbConfig(mode=WandbMode(mode), **wandb)
    return tracking.Tracker(settings, tmp_path, job_type="unit", name="unit",
                            config={"wandb": {"mode": mode}, "beta": math.inf},
                            tags=settings.tags + ["unit"], resume_id=resume_id)


def test_offline_run_holds_what_was_logged(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    png = save(fig, tmp_path / "p.png")
    with _tracker(tmp_path, tags=["hello"], project="dnnlab-test") as tr:
        tr.log({"loss": 0.5}, step=1)
        tr.log({"loss": 0.25, "beta": math.inf}, step=2)
        tr.table(Table("rows", ["beta", "gap"], [[1.0, 0.1], [math.inf, 0.0]]))
        tr.image("plot", png)
        tr.summary(final=0.25, beta=math.inf, nested={"a": math.inf})
    (run,) = find_runs(tmp_path)
    w = summarize(run)
    assert w["run"].job_type == "unit" and list(w["run"].tags) == ["hello", "unit"]
    assert w["run"].display_name == "unit" and w["summary"]["beta"] == "inf"  # no Infinity
    assert w["summary"]["nested"] == {"a": "inf"} and w["exit"] == 0
    assert w["run"].project == "dnnlab-test" and w["config"]["beta"] == "inf"
    assert [h["loss"] for h in w["history"] if "loss" in h] == [0.5, 0.25]
    assert w["summary"]["rows/_type"] == "table-file" and w["summary"]["plot/_type"] == "image-file"
    assert not (tmp_path / "results.json").exists()  # the job's Results owns it, not the sink
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[1] == {"loss": 0.25, "beta": "inf", "_step": 2}
    assert lines[2:] == [{"rows": {"_type": "table", "path": "rows.csv"}},
                         {"plot": {"_type": "image", "path": "p.png"}}]
    assert (tmp_path / "rows.csv").read_text().splitlines()[2] == "inf,0.0"


def test_an_offline_run_starts_no_telemetry_exporter(tmp_path):
    """W&B's OpenTelemetry proxy reads the process-wide mode: an offline run left it exporting
    from two threads (and its first `log` took ~80 ms). Offline sends nothing."""
    with _tracker(tmp_path) as tr:
        tr.log({"loss": 0.5}, step=1)
        names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith("Otel")], names


def test_rows_from_the_writer_thread_arrive_whole_and_in_order(tmp_path):
    """`log` only queues a row for W&B; anything that reads the run (next_step) or calls W&B
    after it waits for the rows before it, so W&B holds every row, in step order."""
    with _tracker(tmp_path) as tr:
        for step in range(300):
            tr.log({"loss": step / 300}, step=step)
        assert tr.next_step == 299  # W&B's own count (its last row still open): all arrived
        tr.summary(final=1.0)
        threads = [t.name for t in threading.enumerate()]
    assert "dnnlab-wandb-rows" not in [t.name for t in threading.enumerate()]  # ended on exit
    assert "dnnlab-wandb-rows" in threads
    (run,) = find_runs(tmp_path)
    w = summarize(run)
    assert [h["_step"] for h in w["history"]] == list(range(300))
    assert [h["loss"] for h in w["history"]] == [s / 300 for s in range(300)]
    assert w["summary"]["final"] == 1.0


def test_disabled_mode_writes_the_mirror_only(tmp_path):
    with _tracker(tmp_path, "disabled") as tr:
        assert tr.run is None and tr.run_id is None and tr.next_step == 0
        tr.log({"x": 1}, step=0)
        tr.summary(x=1)
    assert find_runs(tmp_path) == [] and not (tmp_path / tracking.ID_FILE).exists()
    assert read_json(tmp_path / "nothing.json") is None
    assert (tmp_path / "metrics.jsonl").read_text() == '{"x": 1, "_step": 0}\n'


def test_results_is_written_on_every_update_and_json_safe(tmp_path):
    res = Results(tmp_path)
    res.update(history=[1], beta=math.inf)
    assert read_json(res.path) == {"history": [1], "beta": "inf"}
    res.update(v=[math.nan, -math.inf])
    assert json.loads(res.path.read_text())["v"] == ["nan", "-inf"]
    assert not (tmp_path / "results.json.tmp").exists()
    with pytest.raises(OSError) as err:
        write_json(tmp_path / "no" / "r.json", {})
    assert err.value.filename == str(tmp_path / "no" / "r.json")


def _silent_server():
    """A TCP server that accepts and never answers (a W&B host behind a dead proxy)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    threading.Thread(target=lambda: [conns.append(srv.accept()) for _ in range(8)],
                     daemon=True).start()
    return srv


@pytest.mark.parametrize("where", ["refused", "hangs"])
def test_online_that_cannot_answer_falls_back_within_the_timeout(tmp_path, monkeypatch, capsys,
                                                                 where):
    srv = _silent_server() if where == "hangs" else None
    port = srv.getsockname()[1] if srv else 9  # nothing listens on 9
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(tracking, "_STATE", {"warned": False, "down": False})
    with _tracker(tmp_path / "a", "online", init_timeout=2) as tr:
        assert tr.run is not None and tr.run.settings.mode == "offline"
        tr.summary(done=True)
    with _tracker(tmp_path / "b", "online", init_timeout=2) as tr:  # the process knows: offline
        assert tr.run.settings.mode == "offline"
    assert tracking._STATE["down"]  # the second run never tried online: one timeout in all
    err = capsys.readouterr().err
    assert err.count("warning: W&B could not start in mode 'online'") == 1
    assert "carrying on offline" in err and len(find_runs(tmp_path)) == 2


CONFIG = {"model": {"name": "smoothmax_cnn", "pool": {"beta": 4.0, "learnable": False}}}
TRAIN = RunNameRule(parts=["model.name", "model.pool.beta", "model.pool.learnable"],
                    skip=["experiment", "model"],
                    tags=["model.name", "experiment"])


@pytest.mark.parametrize("config, overrides, name", [
    (CONFIG, [], "train-smoothmax_cnn-beta4"),
    ({"model": {"name": "smoothmax_cnn", "pool": {"beta": "inf"}}},
     ["model.pool.beta=inf", "trainer.epochs=3", "hydra.run.dir=x", "wandb.mode=offline",
      "trainer.resume=true", "+model.builder.channels=[8,16,16]"],
     "train-smoothmax_cnn-betainf-epochs=3"),
    ({"model": {"name": "cnn", "pool": {"beta": 0.5, "learnable": True}}},
     ["experiment=temperature_sweep"], "train-cnn-beta0.5-learnable"),
    ({}, ["beta.max=1e6"], "train-max=1e6"),
    ({}, ["real_nets=[{name:resnet18,input_shape:[2,3,32,32]}]"],
     "train-real_nets=[{name:resnet18,input..."),
])
def test_run_names_follow_the_pipelines_rule(config, overrides, name):
    assert naming.run_name(TRAIN, "train", config, overrides) == name
    long = naming.run_name(RunNameRule(), "x", {}, [f"k{i}=v" for i in range(60)])
    assert len(long) == naming.NAME_MAX
    assert naming.run_name(RunNameRule(), "conv", CONFIG, ["model.pool.beta=2"]) == (
        "conv-beta=2")  # the tracker itself knows no pipeline's keys


def test_run_tags_add_pipeline_and_the_rules_values_once():
    assert naming.run_tags(TRAIN, "train", CONFIG, ["a", "train"],
                             {"experiment": "temperature_sweep"}) == [
        "a", "train", "smoothmax_cnn", "temperature_sweep"]
    assert naming.run_tags(RunNameRule(), "conv", {}, [], None, "x") == ["conv", "x"]


def _rows(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


def test_resume_continues_the_run_and_replays_what_the_local_copy_holds(tmp_path):
    with _tracker(tmp_path) as tr:
        tr.define_metric("trainer/global_step")
        tr.define_metric("loss", step_metric="trainer/global_step", summary="min")
        tr.config_update(beta=math.inf, log10_beta=6.0)
        for s in range(1, 6):
            tr.log({"trainer/global_step": s, "loss": 1.0 / s}, step=s)
        tr.artifact("model", "model", [tmp_path / "metrics.jsonl"], metadata={"b": math.inf},
                    aliases=["best"])
        first = tr.run_id
    stored = json.loads((tmp_path / tracking.ID_FILE).read_text())
    assert stored["id"] == first == tracking.stored_run_id(tmp_path) and stored["name"] == "unit"
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a row cut by a kill
        f.write('{"loss": 0.1, "_st')
    with _tracker(tmp_path, resume_id=first) as tr:
        assert tr.run_id == first
        assert replay(tr, 3) == 3  # steps 1-3 replayed into the (offline: new) file
        tr.log({"trainer/global_step": 4, "loss": 0.3}, step=4)
    kept = _rows(tmp_path / "metrics.jsonl")
    assert [r["_step"] for r in kept] == [1, 2, 3, 4] and kept[-1]["loss"] == 0.3
    dropped = (tmp_path / DISCARDED).read_text().splitlines()
    assert [json.loads(d)["_step"] for d in dropped[:2]] == [4, 5] and len(dropped) == 3
    runs = [summarize(r) for r in find_runs(tmp_path)]
    assert {w["run"].run_id for w in runs} == {first}
    new, old = sorted(runs, key=lambda w: len(w["history"]))  # the killed run had 5 rows
    assert [h["_step"] for h in new["history"]] == [1, 2, 3, 4]
    assert old["config"]["beta"] == "inf" and old["metrics"]["loss"].step_metric == (
        "trainer/global_step")
    assert [a.type for a in old["artifacts"]] == ["model"]
    assert json.loads(old["artifacts"][0].metadata) == {"b": "inf"}


def test_a_fresh_run_in_the_same_dir_is_a_new_run(tmp_path):
    ids = []
    for _ in range(2):
        with _tracker(tmp_path) as tr:
            ids.append(tr.run_id)
    assert ids[0] != ids[1]
    with _tracker(tmp_path, "disabled") as tr:
        assert replay(tr, 0) == 0  # no W&B run: the local copy is still cut at the step
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_wandb_table_types_each_column_once():
    t = Table("layers", ["layer", "macs", "beta"],
              [["features.0", 70_276_800, math.inf], ["fc", 5, 0.5]])
    w = tracking.wandb_table(t)
    assert w.columns == t.columns
    assert w.data == [["features.0", 70_276_800, "inf"], ["fc", 5, "0.5"]]  # one type a column


_INTERRUPTED = r'''
import json, signal, sys
from pathlib import Path
from dnnlab.run import tracking
from dnnlab.run.settings import WandbConfig, WandbMode
armed, hits = [False], [0]
def handler(*_):
    if armed[0]:
        armed[0] = False
        hits[0] += 1
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, handler)
out = Path(sys.argv[1])
with tracking.Tracker(WandbConfig(mode=WandbMode.offline), out, job_type="unit", name="unit",
                      config={}) as tr:
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    for step in range(3000):
        for call in (lambda: tr.log({"loss": step}, step=step), lambda: tr.run):
            try:  # the outer try: an interrupt may also land in the inner finally
                try:
                    armed[0] = True
                    call()
                finally:
                    armed[0] = False
            except KeyboardInterrupt:
                pass
    signal.setitimer(signal.ITIMER_REAL, 0)
print(json.dumps({"hits": hits[0]}))
'''


@pytest.mark.slow
def test_ctrl_c_anywhere_in_logging_never_hangs_the_run(tmp_path):
    """A KeyboardInterrupt landing anywhere while rows are queued or waited for (every 0.2 ms,
    3,000 rows) leaves no lock held: the run finishes, and W&B's history holds, in order, rows
    that metrics.jsonl holds."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1])["hits"] > 10
    (run,) = find_runs(tmp_path)
    w = summarize(run)
    steps = [h["_step"] for h in w["history"]]
    mirrored = {json.loads(s)["_step"] for s in
                (tmp_path / "metrics.jsonl").read_text().splitlines()}
    assert w["exit"] == 0 and steps == sorted(set(steps)) and len(steps) > 10
    assert set(steps) <= mirrored
