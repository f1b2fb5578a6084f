"""The lse_limits pipeline (seed problem 1): its per-row computation against closed forms, its
config checks, and end to end as a user runs it, W&B offline and read back from disk."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dnnlab.errors import ConfigError
from pipelines.lse_limits import (
    grad1_softmax_err,
    make_input,
    measure_row,
    report_section,
    settings,
)
from tests.wandb_reader import find_runs, summarize

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = ["n=50", "beta.num=7"]  # betas 1e-3, 10^-1.5, ..., 1e6 and inf


# -- the per-row computation, closed forms ------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_all_equal_attains_the_bound(dtype):
    """x_i all equal: nu_beta = x + log(n)/beta, so gap = log(n)/beta (seed 1a, the upper bound
    attained); grad = softmax = 1/n each, which is also e (all n entries tie): distance 0."""
    n, beta = 64, 2.0
    r = measure_row(torch.full((n,), 3.0, dtype=dtype), beta)
    assert r["bound"] == math.log(n) / beta
    assert r["gap"] == pytest.approx(math.log(n) / beta, abs=r["tol"])
    assert r["gap_f64"] == pytest.approx(math.log(n) / beta, abs=1e-14)
    assert r["holds"] and r["holds_f64"] and r["ratio_f64"] == pytest.approx(1.0, abs=1e-14)
    assert r["grad_onehot_dist"] == pytest.approx(0.0, abs=1e-6)
    assert r["grad_entropy"] == pytest.approx(math.log(n), rel=1e-6)  # uniform: log n
    assert r["grad_err_autograd"] < 1e-6


def test_row_one_max_with_a_gap_closed_form():
    """x = (0, ..., 0, g): with a = (n - 1) exp(-beta g), gap = log(1 + a)/beta (seed 1a),
    p_max = 1/(1 + a), ||p - e||_1 = 2a/(1 + a) (seed 1c), H = -p_max log p_max - a/(1+a) log q."""
    n, g, beta = 10, 1.5, 3.0
    x = torch.zeros(n, dtype=torch.float64)
    x[4] = g
    r = measure_row(x, beta)
    a = (n - 1) * math.exp(-beta * g)
    q = math.exp(-beta * g) / (1 + a)
    assert r["gap"] == pytest.approx(math.log1p(a) / beta, rel=1e-13)
    assert r["grad_onehot_dist"] == pytest.approx(2 * a / (1 + a), rel=1e-13)
    h = math.log1p(a) - (n - 1) * q * math.log(q * (1 + a))  # -sum p log p
    assert r["grad_entropy"] == pytest.approx(h, rel=1e-12)
    assert r["grad_err_autograd"] < 1e-15 and r["holds"]


def test_row_at_inf_with_ties_and_neg_inf():
    """beta = inf: nu = max exactly (gap 0, bound 0); grad = e with the tie shared: 1/2 each."""
    x = torch.tensor([1.0, 5.0, -math.inf, 5.0, 2.0])
    r = measure_row(x, math.inf)
    assert r["gap"] == 0 and r["bound"] == 0 and r["holds"] and r["ratio"] is None
    assert r["grad_onehot_dist"] == 0 and r["grad_err_autograd"] == 0
    assert r["grad_entropy"] == pytest.approx(math.log(2))
    r = measure_row(x, 1e3)  # finite beta: the -inf entry weighs 0, ties share
    assert r["grad_entropy"] == pytest.approx(math.log(2), rel=1e-6) and r["holds"]


def test_grad1_is_softmax_and_inputs():
    x = make_input("normal", 300, torch.float64, seed=1)
    assert grad1_softmax_err(x) < 1e-15  # seed 1b
    ties = make_input("ties", 300, torch.float16, seed=1)
    assert ties.dtype == torch.float16 and int((ties == ties.max()).sum()) >= 5
    neg = make_input("neg_inf", 300, torch.float32, seed=1)
    assert int(torch.isinf(neg).sum()) == 150 and torch.isfinite(neg.max())
    big = make_input("large", 300, torch.float32, seed=1)
    assert 1e37 < big.abs().max() < torch.finfo(torch.float32).max
    gap = make_input("onehot_gap", 300, torch.float32, seed=1)
    assert gap.max() == 2 and torch.sort(gap).values[-2] < 1


# -- config checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,shown", [
    ("n", 0, "got 0"), ("n", "abc", "'abc'"), ("inputs", ["nope"], "'nope'"),
    ("dtype", "int8", "'int8'"), ("beta.min", 0, "got 0"), ("beta.min", -1.0, "got -1.0"),
    ("beta.max", 1e-4, "got 0.0001"), ("beta.num", 0, "got 0"),
    ("beta.include_inf", "maybe", "'maybe'"), ("softmax_betas", [0, 1], "got 0"),
    ("softmax_input", "foo", "'foo'"), ("n_show", 0, "got 0")])
def test_bad_config_names_key_and_value(key, value, shown):
    cfg = OmegaConf.load(CONF / "lse_limits.yaml")
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError) as err:
        settings(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{key}:") and shown in msg and "\n" not in msg


# -- end to end ---------------------------------------------------------------------------------

def test_lse_limits_end_to_end(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("lse_limits", *SMALL, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["all_bounds_hold"] is True and res["n"] == 50 and res["dtype"] == "float32"
    assert len(res["betas"]) == 8 and res["betas"][-1] == "inf"
    assert len(res["rows"]) == 8 * 6 and set(res["grad1_softmax_err"]) == set(res["inputs"])
    for r in res["rows"]:
        for key in ("input", "beta", "n", "gap", "bound", "holds", "grad_onehot_dist",
                    "grad_entropy", "grad_err_autograd"):
            assert key in r
    inf_rows = [r for r in res["rows"] if r["beta"] == "inf"]
    assert len(inf_rows) == 6
    assert all(r["gap"] == 0 and r["bound"] == 0 and r["grad_onehot_dist"] == 0 for r in inf_rows)
    assert max(res["grad1_softmax_err"].values()) < 1e-6
    for png in ("gap_vs_beta.png", "grad_vs_beta.png", "softmax_weights.png"):
        assert (out / png).stat().st_size > 1000
    assert "smooth max limits" in proc.stdout and "onehot_gap" in proc.stdout
    (run,) = find_runs(out)
    w = summarize(run)
    assert w["run"].job_type == "lse_limits" and w["config"]["n"] == 50
    assert w["summary"]["all_bounds_hold"] is True
    assert w["summary"]["worst_gap_bound_ratio"] == pytest.approx(res["worst_gap_bound_ratio"])
    assert any("gap/normal" in h and "log10_beta" in h for h in w["history"])
    assert any("gap_vs_beta/_type" in h for h in w["history"])  # the image


def test_lse_limits_multirun_groups_jobs(pipeline, tmp_path):
    sweep = tmp_path / "sweep"
    proc = pipeline("lse_limits", "n=10,100", "beta.num=4", f"hydra.sweep.dir={sweep}",
                    multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups, ns = set(), set()
    for job in ("0", "1"):
        res = json.loads((sweep / job / "results.json").read_text())
        ns.add(res["n"])
        (run,) = find_runs(sweep / job)
        w = summarize(run)
        groups.add(w["run"].run_group)
        assert w["config"]["n"] == res["n"] and w["summary"]["all_bounds_hold"] is True
    assert ns == {10, 100}
    assert len(groups) == 1 and groups.pop().startswith("lse_limits-")


def test_lse_limits_bad_config_is_one_line(pipeline, tmp_path):
    proc = pipeline("lse_limits", "n=0", f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: n:") and "got 0" in lines[0]
    assert "Traceback" not in proc.stderr


# -- the report section -------------------------------------------------------------------------

class _Tracker:
    def __init__(self):
        self.images, self.kv = {}, {}

    def image(self, key, path, caption=None):
        self.images[key] = path

    def summary(self, **kv):
        self.kv.update(kv)


def test_report_section(tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    tracker = _Tracker()
    cfg = OmegaConf.create({"smooth_max": {"overrides": ["n=100", "beta.num=10"]}})
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            md = report_section(cfg, tmp_path, tracker)
    finally:
        GlobalHydra.instance().clear()
    assert md.lstrip().startswith("## 1. Smooth max (seed problem 1)")
    assert "| seed claim | measured | holds |" in md
    claims = [ln for ln in md.splitlines() if ln.startswith(("| 1a", "| 1b", "| 1c"))]
    assert len(claims) == 3 and all(ln.endswith("| yes |") for ln in claims), md
    for name in ("lse_gap_vs_beta.png", "lse_grad_vs_beta.png", "lse_softmax_weights.png"):
        assert f"]({name})" in md and (tmp_path / name).stat().st_size > 1000
    assert tracker.kv["lse/all_bounds_hold"] is True and len(tracker.images) == 3
