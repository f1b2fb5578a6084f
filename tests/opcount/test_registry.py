"""dnnlab.opcount.registry: a handler registered for another op counts it by its closed form."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.errors import ShapeError
from dnnlab.opcount import count_ops, register_handler, unregister_handler
from dnnlab.opcount.registry import HANDLERS, arg, needs_grad, op_name, shape_of


def count_cumsum(counter, name, args, kwargs, out):
    x, dim = args[0], arg(args, kwargs, 1, "dim")  # x: (..., L, ...) along dim
    adds = x.numel() - x.numel() // x.shape[dim]  # L - 1 adds per line
    counter.add(name, "elementwise", shape_of(x), shape_of(out), mults=0, adds=adds, macs=adds)


def count_bilinear(counter, name, args, kwargs, out):
    x1, w = args[0], args[2]  # x1 (N, I), x2 (N, J), w (O, I, J)
    rows, (o, i, j) = x1.shape[0], w.shape
    macs = rows * o * i * (j + 1)  # per output: W_o x2 (I J MACs), then x1 . (W_o x2) (I)
    bwd = macs * (int(needs_grad(x1)) + int(needs_grad(w)))
    counter.add(name, "linear", shape_of(x1), shape_of(out), macs, macs, macs, bwd)


class Cumsum(nn.Module):
    """torch.cumsum and Tensor.cumsum."""

    def forward(self, x):  # (B, L)
        return torch.cumsum(x, 1) + x.cumsum(dim=0)  # the function and the method


@pytest.fixture
def registered():
    register_handler(torch.cumsum, count_cumsum)
    builtin = HANDLERS["bilinear"]  # a built-in one: replaced by the example, then put back
    register_handler("bilinear", count_bilinear, replace=True)
    yield
    unregister_handler("cumsum")
    register_handler(F.bilinear, builtin, replace=True)


def test_a_registered_op_is_counted_by_its_closed_form(registered):
    report = count_ops(Cumsum(), [3, 7])
    rows = [r for r in report.layers if r.op == "cumsum"]
    assert [r.adds for r in rows] == [3 * (7 - 1), (3 - 1) * 7]  # L - 1 adds per line
    assert rows[0].path == "" and rows[0].out_shape == [3, 7]
    (row,) = count_ops(_Pair(nn.Bilinear(4, 5, 6)), [2, 4]).layers
    assert row.op == "bilinear" and row.family == "linear" and row.path == "layer"  # the example
    assert row.macs == 2 * 6 * 4 * (5 + 1)


class _Pair(nn.Module):
    """Bilinear of x and x[:, :1] repeated to 5 features (two inputs from one)."""

    def __init__(self, layer: nn.Bilinear):
        super().__init__()
        self.layer = layer

    def forward(self, x):  # (N, 4)
        return self.layer(x, x[:, :1].expand(-1, 5))  # (N, 6)


def test_without_a_handler_the_op_is_not_counted():
    report = count_ops(Cumsum(), [3, 7])
    assert "cumsum" not in HANDLERS
    assert [r.family for r in report.layers] == ["elementwise"]  # the + only
    assert report.not_counted == {"cumsum": ["<model>"]}  # listed, never dropped silently


def test_registering_twice_needs_replace(registered):
    with pytest.raises(ValueError, match="'cumsum' already has a handler"):
        register_handler("cumsum", count_cumsum)

    def fail(counter, name, args, kwargs, out):
        raise counter.fail("no cumsum here")

    register_handler("cumsum", fail, replace=True)
    with pytest.raises(ShapeError, match=r"layer '<model>' \(Cumsum\): no cumsum here"):
        count_ops(Cumsum(), [3, 7])


def test_precheck_runs_before_the_op(registered):
    def precheck(counter, args, kwargs):
        if args[0].dim() != 2:
            raise counter.fail(f"expected 2 dims, got {shape_of(args[0])}")

    register_handler(torch.cumsum, count_cumsum, precheck=precheck, replace=True)
    with pytest.raises(ShapeError, match=r"expected 2 dims, got \[3\]"):
        count_ops(Cumsum(), [3])


def test_bad_registrations():
    assert op_name(torch.cumsum) == op_name("cumsum") == "cumsum"
    with pytest.raises(ValueError, match="has no __name__"):
        op_name(object())
    with pytest.raises(TypeError, match="must be callable"):
        register_handler("cumsum", 3)
    unregister_handler("not_an_op")  # no error
