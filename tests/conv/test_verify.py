"""dnnlab.conv.verify: every pair of methods, gradcheck through our Function, real networks; and
a broken backward is caught."""
import pytest
import torch

from dnnlab.conv import function
from dnnlab.conv.chain import ChainSpec
from dnnlab.conv.verify import (
    compare_methods,
    compare_real_net,
    formula,
    gradcheck_chain,
    pair_summary,
    passes,
)
from dnnlab.core.errors import ShapeError

SPEC = ChainSpec(n0=64, filters=[5, 3, 3], activation="sigmoid")
METHODS = ["matrix", "conv", "autograd", "dnnlab"]


def test_every_pair_agrees_in_float64():
    res = compare_methods(SPEC, METHODS, batch=4, dtype=torch.float64, seed=0, tol=1e-10)
    rows = res["comparisons"]
    assert len(rows) == 6 * 7  # 6 pairs x (y, w1, b1, w2, b2, w3, b3)
    assert all(r["passed"] and r["max_abs_err"] <= 1e-10 for r in rows)
    assert set(res["seconds"]) == set(METHODS) and list(res["scale"])[:2] == ["y", "w1"]
    pairs = pair_summary(rows)
    assert list(pairs)[0] == "matrix-conv" and all(p["passed"] for p in pairs.values())


def test_float32_within_its_tolerance():
    res = compare_methods(SPEC, ["matrix", "conv"], batch=2, dtype=torch.float32, seed=1,
                          tol=3.8e-5)
    assert all(r["passed"] for r in res["comparisons"])
    assert max(r["max_abs_err"] for r in res["comparisons"]) > 0  # float32 rounding shows


def test_formula_and_passes():
    assert formula("y") == "y_L (forward)"
    assert formula("w2") == "C_(v_2^T) y_1" and formula("b3") == "v_3 . 1"
    assert passes(1.0, 1e-12, 1e-10) and not passes(float("nan"), float("nan"), 1e-10)


def test_a_broken_backward_is_caught(monkeypatch):
    """Break our Function's bias gradient (dJ/db = 2 v . 1 instead of v . 1, docs/math.md (3a)):
    gradcheck and the dnnlab comparisons fail, the matrix/conv/autograd ones still pass."""
    good = function.conv_bias_grad
    monkeypatch.setattr(function, "conv_bias_grad", lambda g: 2 * good(g))
    gc = gradcheck_chain(SPEC, batch=4, seed=0)
    assert gc["passed"] is False and set(gc["errors"]) == {"aten", "explicit"}
    rows = compare_methods(SPEC, METHODS, 4, torch.float64, 0, 1e-10)["comparisons"]
    bad = {(r["a"], r["b"], r["param"]) for r in rows if not r["passed"]}
    assert bad == {(a, "dnnlab", f"b{l}") for a in ("matrix", "conv", "autograd")
                   for l in (1, 2, 3)}


def test_gradcheck_passes_at_a_small_size():
    gc = gradcheck_chain(SPEC, batch=4, seed=0)
    assert gc["passed"] and gc["modes"] == {"aten": True, "explicit": True}
    assert gc["n0"] == 24 and gc["batch"] == 2 and gc["inputs"] == 2 * 24 + 5 + 3 + 3 + 3


def test_real_net_swapped_vs_native():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).double().train()
    r = compare_real_net(model, "alexnet", [1, 3, 64, 64], seed=0, tol=1e-10)
    s = r["summary"]
    assert s["convs_swapped"] == 5 and s["params_compared"] == 17 and s["passed"]
    assert s["max_abs_err"] == 0.0 and s["dtype"] == "float64"  # to the last bit
    assert r["comparisons"][0]["param"] == "input"
    small = torchvision.models.alexnet(weights=None).double()
    with pytest.raises(ShapeError,
                       match=r"^real_nets\[1\] \(alexnet, input_shape=\[1, 3, 8, 8\]\)"):
        compare_real_net(small, "alexnet", [1, 3, 8, 8], 0, 1e-10, key="real_nets[1]")
