"""The grad_check pipeline (seed problem 4) end to end, W&B offline and read back from disk, plus
its config checks and report section in-process."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dnnlab.errors import ConfigError, ShapeError
from tests.wandb_reader import find_runs, summarize

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = ["scaling.n_max_log2=9", "real_nets=[{name:resnet18,input_shape:[2,3,32,32]}]"]
THREE_PAIRS = [("matrix", "conv"), ("matrix", "autograd"), ("conv", "autograd")]


def test_grad_check_end_to_end(pipeline, tmp_path):
    out = tmp_path / "run"
    # A_w at n = 2^9 is 3.1 MB > 1e6 bytes: the matrix form is skipped there
    proc = pipeline("grad_check", *SMALL, "scaling.max_matrix_bytes=1e6", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["passed"] is True and res["complete"] is True
    assert res["dtype"] == "float64" and res["tolerance"] == 1e-10
    assert res["net"]["sizes"] == [64, 60, 58, 56]  # seed 4: n_l = n_{l-1} - f_l + 1

    # seed net: the three pairs, every w_l and b_l, float64 errors <= 1e-10
    seed = {(r["a"], r["b"], r["param"]): r for r in res["comparisons"] if r["net"] == "seed"}
    for l in (1, 2, 3):
        for param in (f"w{l}", f"b{l}"):
            for a, b in THREE_PAIRS:
                r = seed[(a, b, param)]
                assert set(r) >= {"a", "b", "param", "max_abs_err", "max_rel_err"}
                assert r["max_abs_err"] <= 1e-10 and r["max_rel_err"] <= 1e-10, r
    assert all(seed[(a, b, "y")]["max_abs_err"] <= 1e-10 for a, b in THREE_PAIRS)
    assert ("autograd", "dnnlab", "w1") in seed  # our Conv1d's hand-written backward too

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
    assert sc["analysis"]["matrix_skipped"] == [512]
    assert sc["rows"][-1]["matrix_skipped"] is True and sc["rows"][-1]["matrix_s"] is None
    assert all(r["conv_s"] > 0 for r in sc["rows"]) and sc["rows"][0]["matrix_s"] > 0
    assert (out / "scaling.png").stat().st_size > 10_000
    assert (out / "scaling.csv").read_text().splitlines()[-1].endswith(",True")
    assert "skipped" in proc.stdout and "PASSED" in proc.stdout

    (run,) = find_runs(out)
    w = summarize(run)
    assert w["run"].job_type == "grad_check" and w["run"].project == "dnnlab"
    assert w["config"]["net"]["filters"] == [5, 3, 3]
    assert w["summary"]["passed"] is True and w["summary"]["gradcheck/passed"] is True
    assert w["summary"]["seed/matrix-conv/max_abs_err"] <= 1e-10
    logged = {k for h in w["history"] for k in h}
    assert {"comparisons/_type", "scaling/_type", "scaling_plot/_type"} <= logged


def test_grad_check_multirun_one_group(pipeline, tmp_path):
    sweep = tmp_path / "sweep"
    proc = pipeline("grad_check", "net.activation=sigmoid,tanh", "real_nets=[]",
                    "gradcheck=false", "scaling.n_max_log2=7", f"hydra.sweep.dir={sweep}",
                    multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups, acts = set(), set()
    for job in ("0", "1"):
        res = json.loads((sweep / job / "results.json").read_text())
        assert res["passed"] is True
        acts.add(res["net"]["activation"])
        w = summarize(find_runs(sweep / job)[0])
        groups.add(w["run"].run_group)
        assert w["run"].job_type == "grad_check"
    assert acts == {"sigmoid", "tanh"}
    assert len(groups) == 1 and groups.pop().startswith("grad_check-")


def test_grad_check_filter_longer_than_input_is_one_line(pipeline, tmp_path):
    proc = pipeline("grad_check", "net.n0=4", "net.filters=[5]", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "layer 1" in lines[0] and "net.filters[0]" in lines[0] and "f=5" in lines[0]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# in-process: the config checks, the dtype tolerance, the report section


@pytest.fixture
def composed():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        yield lambda *o: compose(config_name="grad_check", overrides=list(o))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("overrides, error, words", [
    (["net.activation=swish"], ConfigError, ["net.activation", "swish"]),
    (["dtype=float8"], ConfigError, ["dtype", "float8"]),
    (["scaling.n_min_log2=9", "scaling.n_max_log2=7"], ConfigError, ["n_min_log2=9"]),
    (["scaling.n_min_log2=2"], ShapeError, ["scaling.n_min_log2", "n >= 7"]),
    (["net.n0=8", "net.filters=[3,3,5]"], ShapeError, ["net.filters[2]", "layer 3", "n_2=4"]),
    (["seednet=deep", "net.filters=[3]"], ConfigError, ["net.filters and net.layers"]),
    (["net.filters=null", "net.layers=[{f:3},{f:9}]", "net.n0=10"], ShapeError,
     ["net.layers[1].f", "layer 2"]),
    (["net.filters=null", "net.layers=[{f:3,activation:relu},{f:3}]"], ConfigError,
     ["net.layers[0].activation", "net.activation"]),
    (["net.filters=null", "net.layers=[{f:3},{f:3,activation:tanh}]"], ConfigError,
     ["net.layers[1].activation", "linear"]),
    (["real_nets=[{name:nonet,input_shape:[1,3,8,8]}]"], ConfigError, ["real_nets[0].name"]),
    (["methods=[matrix]"], ConfigError, ["methods"]),
])
def test_bad_configs_name_their_key(composed, overrides, error, words):
    from pipelines.grad_check import plan_of

    with pytest.raises(error) as err:
        plan_of(composed(*overrides))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_layer_list_and_presets(composed):
    from pipelines.grad_check import plan_of

    p = plan_of(composed("net.activation=null", "net.filters=null",
                         "net.layers=[{f:5,activation:gelu},{f:3,bias:false},{f:3}]"))
    assert p.spec.filters == [5, 3, 3] and p.spec.activation == "gelu"
    assert [p.spec.has_bias(l) for l in (1, 2, 3)] == [True, False, True]
    deep = plan_of(composed("seednet=deep")).spec
    assert deep.depth == 8 and deep.sizes()[-1] == 256 - 34


def test_tolerance_keeps_the_share_of_digits():
    from pipelines.grad_check import tolerance_for

    assert tolerance_for(1e-10, torch.float64) == 1e-10
    assert math.isclose(tolerance_for(1e-10, torch.float32), 3.775e-5, rel_tol=1e-3)
    assert 1e-2 < tolerance_for(1e-10, torch.float16) < tolerance_for(1e-10, torch.bfloat16) < 0.1


def test_report_section(composed, tmp_path):
    from pipelines.grad_check import report_section

    composed()  # Hydra initialised, as under pipelines.reproduce

    class Tracker:
        def __init__(self):
            self.images, self.summaries = {}, {}

        def image(self, key, path, caption=None):
            self.images[key] = Path(path)

        def summary(self, **kv):
            self.summaries.update(kv)

    tr = Tracker()
    cfg = OmegaConf.create({"conv_backprop": {"overrides": [
        "real_nets=[]", "gradcheck=false", "scaling.n_min_log2=3", "scaling.n_max_log2=7"]}})
    md = report_section(cfg, tmp_path, tr)
    assert md.lstrip().startswith("## 4. Convolution backprop (seed problem 4)")
    assert "C_(v_2^T) y_1" in md and "v_3 . 1" in md and "matrix vs conv" in md
    assert "![matrix vs conv form](conv_scaling.png)" in md
    assert (tmp_path / "conv_scaling.png").stat().st_size > 10_000
    assert tr.summaries["conv/passed"] is True and "conv/scaling" in tr.images


def test_a_broken_backward_is_caught(composed, monkeypatch):
    """Break our Function's bias gradient (dJ/db = 2 v . 1 instead of v . 1, seed 4a): gradcheck
    and the dnnlab comparisons fail, the matrix/conv/autograd ones still pass."""
    from dnnlab.nn import conv
    from pipelines.grad_check import check_seed, gradcheck_seed, plan_of

    good = conv.conv_bias_grad
    monkeypatch.setattr(conv, "conv_bias_grad", lambda g: 2 * good(g))
    p = plan_of(composed("real_nets=[]", "scaling.enabled=false"))
    gc = gradcheck_seed(p)
    assert gc["passed"] is False and set(gc["errors"]) == {"aten", "explicit"}
    rows = check_seed(p)["comparisons"]
    bad = {(r["a"], r["b"], r["param"]) for r in rows if not r["passed"]}
    assert bad == {(a, "dnnlab", f"b{l}") for a in ("matrix", "conv", "autograd")
                   for l in (1, 2, 3)}
