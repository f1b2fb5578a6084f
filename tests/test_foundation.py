"""The shared pieces: dtypes, the beta parser, timing, the table type, errors, plots."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from dnnlab.core import beta as betas
from dnnlab.core import dtypes, plots, timing
from dnnlab.core.errors import ConfigError, require
from dnnlab.core.table import Table, jsonable
from dnnlab.run.tracking import wandb_table


@pytest.mark.parametrize("name", ["float64", "float32", "float16", "bfloat16"])
def test_dtype_names_round_trip(name):
    t = dtypes.torch_dtype(name)
    assert t == getattr(torch, name) == dtypes.torch_dtype(dtypes.DType(name))
    assert dtypes.torch_dtype(t) is t
    assert dtypes.dtype_name(t) == name == dtypes.dtype_name(dtypes.DType(name))


def test_unknown_dtype_and_compute_dtype():
    with pytest.raises(ValueError, match="int8"):
        dtypes.torch_dtype("int8")
    assert dtypes.compute_dtype(torch.float64) == torch.float64
    for d in (torch.float32, torch.float16, torch.bfloat16):
        assert dtypes.compute_dtype(d) == torch.float32
    with pytest.raises(TypeError):
        dtypes.compute_dtype(torch.int64)


def test_tolerance_keeps_the_share_of_digits():
    assert dtypes.tolerance_for(1e-10, torch.float64) == 1e-10
    # 1e-10 is 10/15.65 of float64's digits; the same share of float32's eps
    got = dtypes.tolerance_for(1e-10, torch.float32)
    expect = torch.finfo(torch.float32).eps ** (math.log(1e-10) / math.log(dtypes.EPS64))
    assert got == pytest.approx(expect) and 1e-5 < got < 1e-4


def test_max_errors_against_float64():
    ref = torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64)
    ours = ref.float() + torch.tensor([0.0, 0.5, 0.0])
    a, r = dtypes.max_errors(ours, ref)
    assert a == 0.5 and r == pytest.approx(0.5 / 4)
    assert dtypes.max_errors(torch.zeros(0), torch.zeros(0)) == (0.0, 0.0)
    assert dtypes.max_errors(torch.ones(2), torch.zeros(2)) == (1.0, 1.0)


@pytest.mark.parametrize("value, expect", [(2, 2.0), ("1e-3", 1e-3), ("inf", math.inf),
                                           (".inf", math.inf), (" +.INF ", math.inf), (0.5, 0.5)])
def test_parse_beta_accepts(value, expect):
    assert betas.parse_beta(value) == expect


@pytest.mark.parametrize("value", [0, -1, "nan", "abc", True, None, [1]])
def test_parse_beta_rejects_with_the_key(value):
    with pytest.raises(ConfigError, match=r"^model\.pool\.beta="):
        betas.parse_beta(value, "model.pool.beta")


def test_parse_beta_finite_only():
    with pytest.raises(ConfigError, match="finite"):
        betas.parse_beta("inf", "beta.max", allow_inf=False)


def test_median_seconds_measures_a_sleep_like_cost():
    x = torch.randn(256, 256)
    t = timing.median_seconds(lambda: x @ x, min_run_time=0.05, threads=1)
    assert 0 < t < 0.5
    before = torch.get_num_threads()
    with timing.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_table_renders_everywhere(tmp_path):
    t = Table("layers", ["layer", "macs", "ok", "shape", "beta"],
              [["features.0", 70_276_800, True, [1, 64, 55, 55], math.inf],
               ["a|b", 5, False, None, 0.123456]], title="AlexNet", formats={"macs": "{:,}"})
    md = t.to_markdown().splitlines()
    assert md[0] == "| layer | macs | ok | shape | beta |" and md[1] == "|---|---|---|---|---|"
    assert md[2] == "| features.0 | 70,276,800 | yes | 1x64x55x55 | inf |"
    assert md[3] == "| a\\|b | 5 | no |  | 0.1235 |"
    path = t.to_csv(tmp_path)
    rows = list(csv.reader(path.open()))
    assert rows[1] == ["features.0", "70276800", "True", "1x64x55x55", "inf"]
    rich = t.to_rich(max_rows=1)
    assert rich.row_count == 1 and "1 more rows" in rich.caption
    w = wandb_table(t)
    assert w.columns == t.columns and w.data[0][4] == "inf"
    with pytest.raises(ValueError, match="cells"):
        Table("bad", ["a", "b"], [[1]])
    assert Table("f", ["x"], [[2.0]], formats={"x": lambda v: f"<{v}>"}).text_rows() == [["<2.0>"]]


def test_jsonable():
    assert jsonable({"a": [math.inf, -math.inf, math.nan, (1, 2)], 3: torch.tensor(2.5)}) == {
        "a": ["inf", "-inf", "nan", [1, 2]], "3": 2.5}
    assert jsonable(dtypes.DType.float16) == "float16"


def test_config_error_under_and_require():
    err = ConfigError.at("epochs", 0, "must be >= 1")
    assert str(err) == "epochs=0: must be >= 1"
    assert str(err.under("trainer")) == "trainer.epochs=0: must be >= 1"
    assert ConfigError("plain").under("x").args == ("plain",)
    require(True, "k", 1, "never")
    with pytest.raises(ConfigError, match="k=2: odd"):
        require(False, "k", 2, "odd")


def test_plots_save_png(tmp_path):
    fig, ax = plots.plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plots.save(fig, tmp_path / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_ratio_alternates_and_takes_the_median_of_the_pairs():
    calls, costs = [], {"a": iter([2.0, 6.0, 3.0, 9.0, 4.0]), "b": iter([1.0, 2.0, 1.0, 3.0, 2.0])}

    def time_fn(fn, number):
        calls.append((fn(), number))
        return next(costs[calls[-1][0]])

    p = timing.paired_ratio(lambda: "a", lambda: "b", rounds=5, min_run_time=0.01,
                            calls=(3, 2), time_fn=time_fn)
    assert [c for c, _ in calls] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert {c: n for c, n in calls} == {"a": 3, "b": 2}
    # pair ratios 2, 3, 3, 3, 2: median 3; quartiles 2 and 3; medians of each side 4 and 2
    assert (p.ratio, p.low, p.high, p.a, p.b, p.rounds) == (3.0, 2.0, 3.0, 4.0, 2.0, 5)


def test_paired_ratio_fills_each_block_from_a_warm_call():
    seen = []

    def time_fn(fn, number):  # a call of "a" costs 0.004 s, of "b" 0.1 s
        seen.append((fn(), number))
        return {"a": 0.004, "b": 0.1}[seen[-1][0]]

    p = timing.paired_ratio(lambda: "a", lambda: "b", rounds=1, min_run_time=0.01, min_calls=2,
                            time_fn=time_fn)
    assert seen[:4] == [("a", 1), ("a", 1), ("b", 1), ("b", 1)]  # warm-up, then one timed call
    assert p.calls == (3, 2)  # ceil(0.01 / 0.004) = 3; b: one call fills it, but at least 2
    assert p.ratio == p.low == p.high == 0.04


def test_paired_ratio_times_real_work():
    x = torch.randn(128, 128)
    with timing.torch_threads(1):
        p = timing.paired_ratio(lambda: x @ x, lambda: x @ x, rounds=3, min_run_time=0.01)
    assert p.rounds == 3 and p.a > 0 and p.b > 0 and p.low <= p.ratio <= p.high
    assert min(p.calls) >= 1
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        timing.paired_ratio(lambda: 0, lambda: 0, rounds=0, min_run_time=0.01)
