"""The opcount pipeline end to end, as a user runs it, W&B offline and read back
from disk; its memory outputs and guard."""

from __future__ import annotations

import csv
import json
import resource

import pytest

from dnnlab.run.cli import quote_switches
from tests.conftest import is_png
from tests.wandb_reader import find_runs, summarize


def test_opcount_alexnet_end_to_end(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("opcount", "model=alexnet", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "alexnet" and res["input_shape"] == [1, 3, 224, 224]
    assert res["totals"]["conv"] == {"analytic": 655_566_528, "fvcore": 655_566_528}
    assert res["totals"]["linear"] == {"analytic": 58_621_952, "fvcore": 58_621_952}
    assert res["reconciled"] is True and res["flop_counter"]["match"] is True
    assert res["layers"][0]["path"] == "features.0" and res["layers"][0]["match"] is True
    assert (out / "results.csv").read_text().startswith("path,")
    assert (out / "layers.csv").read_text().startswith("path,type,op,family")
    assert is_png(out / "per_layer.png")
    rollup = (out / "rollup.csv").read_text().splitlines()
    assert rollup[0] == "path,depth,type,params,macs,bwd_macs,bytes,share"
    assert rollup[1].startswith("<model>,0,AlexNet,61100840,714188480,")
    assert res["params"] == {"total": 61_100_840, "trainable": 61_100_840}
    assert "features (Sequential): params 2,469,696" in proc.stdout
    assert "655,566,528" in proc.stdout and "58,621,952" in proc.stdout
    (run,) = find_runs(out)
    w = summarize(run)
    assert w["run"].job_type == "opcount" and w["run"].project == "dnnlab"
    assert w["config"]["model"]["name"] == "alexnet"
    assert w["summary"]["macs/conv"] == 655_566_528 and w["summary"]["fvcore/linear"] == 58_621_952
    assert w["summary"]["reconciled"] is True
    assert any("layers/_type" in h for h in w["history"])  # the wandb.Table
    assert any("rollup/_type" in h for h in w["history"])
    assert w["summary"]["params/total"] == 61_100_840


@pytest.mark.parametrize("override,status,words", [
    ("input_shape=[1,3,32,32]", 1, ["features.12", "[1, 256, 1, 1]"]),
    ("count.backward=maybe", 2, ["count.backward", "maybe"]),
    ("model=timm model.name=no_such_net_zzz", 1, ["model.name='no_such_net_zzz'"]),
])
def test_opcount_bad_input_is_one_line_and_leaves_nothing(pipeline, tmp_path, override, status,
                                                          words):
    out = tmp_path / "bad"
    proc = pipeline("opcount", "model=alexnet", *override.split(), f"hydra.run.dir={out}")
    assert proc.returncode == status
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # the count runs before the run dir and the W&B run exist


@pytest.mark.slow  # a subprocess run of 10-11 s: make test stays under 10 min
def test_opcount_multirun_with_hydra_grammar_groups_jobs(pipeline, tmp_path):
    sweep = tmp_path / "sweep"
    proc = pipeline("opcount", "model=choice(alexnet,lenet5)", "reconcile=false",
                    f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups, models = set(), set()
    for job in ("0", "1"):
        res = json.loads((sweep / job / "results.json").read_text())
        models.add(res["model"])
        (run,) = find_runs(sweep / job)
        w = summarize(run)
        groups.add(w["run"].run_group)
        assert w["config"]["model"]["name"] == res["model"]
    assert models == {"alexnet", "lenet5"}
    assert len(groups) == 1 and groups.pop().startswith("opcount-")


@pytest.mark.slow  # W&B's own fallback (dnnlab.run.tracking), through this pipeline
def test_wandb_online_without_account_falls_back_to_offline(tmp_path, monkeypatch):
    from tests.conftest import run_pipeline

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "run"
    proc = run_pipeline("opcount", "model=lenet5", "reconcile=false", "wandb.mode=online",
                        "wandb.init_timeout=15", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "W&B could not start" in ln]
    assert len(warnings) == 1 and "carrying on offline" in warnings[0]
    (run,) = find_runs(out)
    assert summarize(run)["summary"]["macs/conv"] > 0
    assert json.loads((out / "results.json").read_text())["model"] == "lenet5"


@pytest.mark.slow  # a subprocess run of 10-11 s: make test stays under 10 min
@pytest.mark.parametrize("side", [8000, 100000])
def test_opcount_huge_input_ends_and_does_not_say_reconciled(pipeline, tmp_path, side):
    """resnet18 at 8000^2 was killed for memory (exit 137) and at 100000^2 said reconciled:
    now fvcore is skipped with one line, and results.json says reconciled null."""
    out = tmp_path / "huge"
    proc = pipeline("opcount", "model=resnet18", f"input_shape=[1,3,{side},{side}]",
                    f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["reconciled"] is None and res["skipped_checks"] == ["fvcore"]
    assert res["failed_checks"] == [] and res["params"]["total"] == 11_689_512
    skip = [ln for ln in proc.stdout.splitlines() if "fvcore skipped" in ln]
    assert len(skip) == 1 and "reconcile_max_gb=4" in skip[0], proc.stdout[-2000:]


@pytest.mark.slow  # 14 s in a subprocess: the fast suite keeps its 10 minutes
def test_opcount_roofline_plot_and_bad_device(pipeline, tmp_path):
    out = tmp_path / "roof"
    proc = pipeline("opcount", "model=lenet5", "reconcile=false", "roofline=a100-80gb",
                    f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    roof = res["roofline"]
    assert roof["device"] == "a100-80gb" and roof["peak_flops"]["bf16-fp16"] == 312e12
    assert roof["seconds"] > 0 and roof["memory_bound"] > 0
    assert is_png(out / "roofline.png")
    bad = pipeline("opcount", "model=lenet5", "roofline=tpu9", f"hydra.run.dir={tmp_path / 'b'}")
    lines = [ln for ln in bad.stderr.strip().splitlines() if ln.strip()]
    assert bad.returncode != 0 and len(lines) == 1 and "roofline" in lines[0] and "tpu9" in lines[0]


@pytest.mark.slow
def test_opcount_resnet18_roofline_cpu_measure(pipeline, tmp_path):
    """The cost model's run: every leaf timed, measured.spearman the rank correlation of the
    rows it reports (scipy's, recomputed here), with the roofline and measured plots. Its goal
    (>= 0.8 at batch 1) depends on the machine's load: benchmarks/opcount_measure.py reports it,
    a test does not assert a timing."""
    out = tmp_path / "measure"
    proc = pipeline("opcount", "model=resnet18", "input_shape=[1,3,224,224]", "roofline=cpu",
                    "measure=true", "reconcile=false", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    m = res["measured"]
    assert len(m["rows"]) > 40 and all(r["measured_s"] > 0 for r in m["rows"])
    from scipy.stats import spearmanr
    rho = spearmanr([r["predicted_s"] for r in m["rows"]], [r["measured_s"] for r in m["rows"]])
    assert m["spearman"] == pytest.approx(float(rho.statistic), abs=1e-9)
    assert is_png(out / "roofline.png")
    assert is_png(out / "measured.png")


@pytest.mark.slow  # a subprocess run of 13-18 s: make test stays under 10 min
def test_opcount_measure_small_network(pipeline, tmp_path):
    out = tmp_path / "m"
    proc = pipeline("opcount", "model=lenet5", "reconcile=false", "measure=true",
                    f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "results.json").read_text())["measured"]
    paths = [r["path"] for r in m["rows"]]
    assert len(paths) >= 3 and len(set(paths)) == len(paths)
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in m["rows"])
    assert -1 <= m["spearman"] <= 1 and m["median_ratio"] > 0
    assert is_png(out / "measured.png")


@pytest.mark.slow  # a pipeline run with a measured step (the same outputs in process: test_memory)
def test_memory_true_predicts_and_measures_into_results_png_and_rollup(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("opcount", "model=lenet5", "input_shape=[16,1,32,32]", "memory=true",
                    "memory.optimizer=sgd", "memory.measure=true", "reconcile=false",
                    "wandb.mode=disabled", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = json.loads((out / "results.json").read_text())["memory"]
    pred, meas = mem["predicted"], mem["measured"]
    assert pred["optimizer"] == "sgd" and pred["precision"] == "32" and pred["train"] is True
    params = 4 * 61_706  # LeNet-5's parameters, float32
    assert pred["by_category"]["parameters"] == params
    assert pred["end_by_category"]["optimizer"] == params  # momentum: one buffer each
    assert abs(pred["peak_bytes"] - meas["peak_bytes"]) <= 0.05 * meas["peak_bytes"]
    assert meas["rss_growth_bytes"] >= 0 and pred["peak_at"]["phase"] in (
        "forward", "backward", "optimizer")
    assert (out / "memory.png").exists()
    with open(out / "rollup.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[0]["saved_bytes"]) == sum(pred["saved_by_module"].values())
    assert "memory at the peak" in proc.stdout and "measured" in proc.stdout


@pytest.mark.slow  # one more pipeline run
def test_memory_keys_without_the_switch_leave_memory_off(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("opcount", "model=lenet5", "memory.optimizer=adamw", "reconcile=false",
                    "wandb.mode=disabled", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "memory" not in json.loads((out / "results.json").read_text())
    assert not (out / "memory.png").exists()


@pytest.mark.parametrize("side,override,words", [
    (8000, ["measure=true"], ["measure=true refused", "memory.measure_max_gb=4"]),
    (100_000, ["memory=true", "memory.measure=true"], ["memory.measure=true refused",
                                                        "memory.measure_max_gb=4"]),
])
def test_a_measurement_over_budget_is_refused_in_one_line_without_allocating(
        pipeline, tmp_path, override, words, side):
    out = tmp_path / "huge"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = pipeline("opcount", "model=resnet18", f"input_shape=[1,3,{side},{side}]",
                    "reconcile=false", *override, f"hydra.run.dir={out}")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb < 3 * 2 ** 20 or peak_kb == before  # the child stayed under 3 GB


def test_bad_memory_keys_are_one_line(pipeline, tmp_path):
    proc = pipeline("opcount", "model=lenet5", "memory=true", "memory.optimizer=lion",
                    f"hydra.run.dir={tmp_path / 'bad'}")
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "lion" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_switches_are_quoted_for_the_config_group_only():
    assert quote_switches(["memory=true", "memory.train=false", "measure=true",
                           "memory=true,false", "+memory=False"]) == [
        "memory='true'", "memory.train=false", "measure=true", "memory='true','false'",
        "+memory='false'"]
