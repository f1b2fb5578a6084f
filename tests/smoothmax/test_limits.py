"""dnnlab.smoothmax.limits: each row against closed forms, the inputs, the settings' checks
(directly and through conf/smoothmax.yaml, naming the full key), and a small run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from dnnlab.core.dtypes import DType
from dnnlab.core.errors import ConfigError
from dnnlab.run.config import register, to_settings
from dnnlab.smoothmax.limits import (
    BetaGrid,
    Distribution,
    LimitsSettings,
    grad1_softmax_err,
    make_input,
    measure_row,
    run,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def composed(*overrides: str):
    """conf/smoothmax.yaml with overrides, as the pipeline gets it."""
    register("smoothmax", LimitsSettings)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            # the paths resolve through Hydra's runtime, which a compose() does not set
            return compose(config_name="smoothmax", overrides=[
                "paths.root_dir=.", "paths.output_dir=.", *overrides])
    finally:
        GlobalHydra.instance().clear()


# -- the per-row computation, closed forms ------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_all_equal_attains_the_bound(dtype):
    """x_i all equal: nu_beta = x + log(n)/beta, so gap = log(n)/beta (docs/math.md (1a), the
    upper bound attained); grad = softmax = 1/n each, which is also e (all n entries tie)."""
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
    """x = (0, ..., 0, g): with a = (n - 1) exp(-beta g), gap = log(1 + a)/beta (1a),
    p_max = 1/(1 + a), ||p - e||_1 = 2a/(1 + a) (1c), H = -p_max log p_max - a/(1+a) log q."""
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
    assert grad1_softmax_err(x) < 1e-15  # docs/math.md (1b)
    ties = make_input(Distribution.ties, 300, torch.float16, seed=1)
    assert ties.dtype == torch.float16 and int((ties == ties.max()).sum()) >= 5
    neg = make_input("neg_inf", 300, torch.float32, seed=1)
    assert int(torch.isinf(neg).sum()) == 150 and torch.isfinite(neg.max())
    big = make_input("large", 300, torch.float32, seed=1)
    assert 1e37 < big.abs().max() < torch.finfo(torch.float32).max
    gap = make_input("onehot_gap", 300, torch.float32, seed=1)
    assert gap.max() == 2 and torch.sort(gap).values[-2] < 1
    assert torch.equal(make_input("uniform", 50, torch.float32, 3),
                       make_input("uniform", 50, torch.float32, 3))  # its own generator


# -- settings -----------------------------------------------------------------------------------

def test_yaml_defaults_are_the_schema_defaults():
    s = to_settings(composed())
    assert s.n == 1000 and s.dtype == DType.float32 and s.inputs == list(Distribution)
    assert s.beta == BetaGrid() and s.softmax_betas == [0.1, 1, 10, 100, math.inf]
    assert (s.softmax_input, s.n_show, s.table_betas, s.seed) == (Distribution.normal, 20, 6, 0)
    betas = s.beta.values()
    assert len(betas) == 29 and betas[0] == 1e-3 and betas[-2] == 1e6 and betas[-1] == math.inf
    assert any(b == pytest.approx(1.0) for b in betas)  # three per decade: beta = 1 on the grid


@pytest.mark.parametrize("override,starts", [
    ("n=0", "n=0:"), ("n=20000000", "n=20000000:"), ("beta.min=0", "beta.min=0.0:"),
    ("beta.min=-1", "beta.min=-1.0:"), ("beta.max=1e-4", "beta.max=0.0001:"),
    ("beta.num=0", "beta.num=0:"), ("softmax_betas=[0,1]", "softmax_betas[0]=0:"),
    ("n_show=0", "n_show=0:"), ("table_betas=0", "table_betas=0:"), ("seed=-1", "seed=-1:"),
    ("inputs=[normal,normal]", "inputs=['normal', 'normal']:"), ("inputs=[]", "inputs=[]:"),
    ("beta.min=1e-320", "beta.min=1e-320:")])
def test_bad_value_names_the_full_key(override, starts):
    with pytest.raises(ConfigError) as err:
        to_settings(composed(override))
    assert str(err.value).startswith(starts) and "\n" not in str(err.value)


def test_bad_type_fails_while_composing():
    from omegaconf.errors import OmegaConfBaseException

    for override in ("dtype=int8", "inputs=[nope]", "softmax_input=foo", "n=abc"):
        with pytest.raises(Exception) as err:  # Hydra wraps the OmegaConf error
            composed(override)
        cause = err.value.__cause__ or err.value
        assert isinstance(cause, OmegaConfBaseException), override


def test_direct_construction_converts_and_checks():
    s = LimitsSettings(n=10, inputs=["ties"], dtype="float64", softmax_betas=["inf", "1e-3"])
    assert s.inputs == [Distribution.ties] and s.torch_dtype == torch.float64
    assert s.softmax_betas == [math.inf, 1e-3]
    assert BetaGrid(min=2.0, max=2.0, num=1, include_inf=False).values() == [2.0]
    with pytest.raises(ConfigError, match="must be >= "):
        LimitsSettings(beta=BetaGrid(min=1e-300, max=1.0))  # below float32's tiny


# -- a small run --------------------------------------------------------------------------------

def test_run_reports_progress_and_sums_up():
    s = LimitsSettings(n=30, inputs=["normal", "ties", "large"], dtype="float32",
                       beta=BetaGrid(min=1e-2, max=1e4, num=4))
    seen = []
    result = run(s, on_progress=lambda partial: seen.append((partial.done,
                                                             dict(partial.to_dict()))))
    assert [d for d, _ in seen] == [1, 2, 3, 4, 5]
    assert "worst_gap_bound_ratio" not in seen[0][1]  # the headline comes with the last beta
    res = result.to_dict()
    assert list(res)[:8] == ["n", "dtype", "seed", "inputs", "betas", "grad1_softmax_err",
                             "rows", "all_bounds_hold"]
    assert res["all_bounds_hold"] and res["grad_onehot_dist_monotone"]
    assert res["grad1_softmax_holds"] and len(res["rows"]) == 5 * 3
    assert res["grad_onehot_dist_at_inf"] == {"normal": 0.0, "ties": 0.0, "large": 0.0}
    assert 0 < res["worst_gap_bound_ratio"] <= 1
    h = result.history(0)
    assert h["log10_beta"] == pytest.approx(-2) and set(h) >= {"gap/normal", "ratio/ties"}
    assert result.history(4) is None  # beta = inf has no log10
    (rows,) = result.tables()
    assert rows.key == "rows" and len(rows.rows) == 15 and rows.columns[:2] == ["input", "beta"]
    overview = result.overview(2)
    assert len(overview.rows) == 3 * 3 and "all bounds hold: True" in overview.caption
    assert "smooth max limits" in overview.title
