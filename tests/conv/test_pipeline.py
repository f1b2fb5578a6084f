"""python -m pipelines.conv end to end: results.json, CSV, PNG and W&B (offline, read back from
its files); a multirun in one W&B group; bad values as one line naming the key."""
from __future__ import annotations

import json

import pytest

from tests.conftest import is_png
from tests.wandb_reader import find_runs, summarize

SMALL = ["scaling.n_max_log2=9", "real_nets=[{name:resnet18,input_shape:[2,3,32,32]}]"]
THREE_PAIRS = [("matrix", "conv"), ("matrix", "autograd"), ("conv", "autograd")]


@pytest.mark.slow  # 16 s in a subprocess: the fast suite keeps its 10 minutes
def test_conv_end_to_end(pipeline, tmp_path):
    out = tmp_path / "run"
    # A_w at n = 2^9 is 3.1 MB > 1e6 bytes: the matrix form is skipped there
    proc = pipeline("conv", *SMALL, "scaling.max_matrix_bytes=1e6", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["passed"] is True and res["complete"] is True
    assert res["dtype"] == "float64" and res["tolerance"] == 1e-10
    assert res["chain"]["sizes"] == [64, 60, 58, 56]  # docs/math.md (3): n_l = n_{l-1} - f_l + 1

    # the chain: the three pairs, every w_l and b_l, float64 errors <= 1e-10
    chain = {(r["a"], r["b"], r["param"]): r for r in res["comparisons"] if r["net"] == "chain"}
    for l in (1, 2, 3):
        for param in (f"w{l}", f"b{l}"):
            for a, b in THREE_PAIRS:
                r = chain[(a, b, param)]
                assert set(r) >= {"a", "b", "param", "max_abs_err", "max_rel_err"}
                assert r["max_abs_err"] <= 1e-10 and r["max_rel_err"] <= 1e-10, r
    assert all(chain[(a, b, "y")]["max_abs_err"] <= 1e-10 for a, b in THREE_PAIRS)
    assert ("autograd", "dnnlab", "w1") in chain  # our Conv1d's hand-written backward too

    assert res["gradcheck"]["passed"] is True
    assert res["gradcheck"]["modes"] == {"aten": True, "explicit": True}

    (net,) = res["real_nets"]
    assert net["name"] == "resnet18" and net["passed"] is True and net["convs_swapped"] == 20
    real = {r["param"]: r for r in res["comparisons"] if r["a"] == "resnet18/dnnlab"}
    assert real["layer1.0.conv1.weight"]["b"] == "resnet18/torch"
    assert len(real) == net["params_compared"] == 63  # 62 parameters + the input
    assert all(r["max_rel_err"] <= 1e-10 for r in real.values())

    sc = res["scaling"]
    assert [r["n"] for r in sc["rows"]] == [64, 128, 256, 512]
    assert sc["analysis"]["matrix_skipped"] == [512] and sc["plot"] == "scaling.png"
    assert sc["rows"][-1]["matrix_skipped"] is True and sc["rows"][-1]["matrix_s"] is None
    assert all(r["conv_s"] > 0 for r in sc["rows"]) and sc["rows"][0]["matrix_s"] > 0
    assert is_png(out / "scaling.png")
    assert (out / "scaling.csv").read_text().splitlines()[-1].endswith(",True")
    assert (out / "real_nets.csv").exists() and (out / "comparisons.csv").exists()
    assert "skipped" in proc.stdout and "PASSED" in proc.stdout

    (run,) = find_runs(out)
    w = summarize(run)
    assert w["run"].job_type == "conv" and w["run"].project == "dnnlab"
    assert w["config"]["chain"]["filters"] == [5, 3, 3]
    assert w["summary"]["passed"] is True and w["summary"]["gradcheck/passed"] is True
    assert w["summary"]["chain/matrix-conv/max_abs_err"] <= 1e-10
    logged = {k for h in w["history"] for k in h}
    assert {"comparisons/_type", "scaling/_type", "scaling_plot/_type", "scaling/n"} <= logged


@pytest.mark.slow
def test_conv_multirun_one_group(pipeline, tmp_path):
    sweep = tmp_path / "sweep"
    proc = pipeline("conv", "chain.activation=sigmoid,tanh", "real_nets=[]",
                    "gradcheck=false", "scaling.n_max_log2=7", f"hydra.sweep.dir={sweep}",
                    multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups, acts = set(), set()
    for job in ("0", "1"):
        res = json.loads((sweep / job / "results.json").read_text())
        assert res["passed"] is True
        acts.add(res["chain"]["activation"])
        w = summarize(find_runs(sweep / job)[0])
        groups.add(w["run"].run_group)
        assert w["run"].job_type == "conv"
    assert acts == {"sigmoid", "tanh"}
    assert len(groups) == 1 and groups.pop().startswith("conv-")


@pytest.mark.parametrize("overrides, status, words", [
    (["chain.n0=4", "chain.filters=[5]"], 1, ["chain.filters[0]", "layer 1", "f=5"]),
    (["chain.activation=swish"], 2, ["chain.activation", "swish"]),
    (["real_nets=[{name:resnet18,input_shape:[1,1,32,32]}]"], 1,
     ["real_nets[0] (resnet18, input_shape=[1, 1, 32, 32])", "conv1"]),
])
def test_bad_values_are_one_line_and_leave_nothing(pipeline, tmp_path, overrides, status, words):
    out = tmp_path / "run"
    proc = pipeline("conv", *overrides, f"hydra.run.dir={out}")
    assert proc.returncode == status, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # refused before the run dir and the W&B run exist
