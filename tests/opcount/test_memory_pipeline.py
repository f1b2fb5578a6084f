"""The opcount pipeline's memory outputs and guard, run as a user runs them."""
from __future__ import annotations

import csv
import json
import resource

import pytest

from dnnlab.run.cli import quote_switches


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
