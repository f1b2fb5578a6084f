"""dnnlab.opcount.registry: pure handlers keyed by torch function objects, one table per count."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.core.errors import ShapeError
from dnnlab.opcount import Count, CountError, count_ops, register_handler, unregister_handler
from dnnlab.opcount import handlers as builtin
from dnnlab.opcount.registry import (
    Entry,
    arg,
    handler_of,
    needs_grad,
    op_name,
    resolve,
    table,
    torch_functions,
)


def count_cumsum(args, kwargs, out) -> Count:
    x, dim = args[0], arg(args, kwargs, 1, "dim")  # x: (..., L, ...) along dim
    adds = x.numel() - x.numel() // x.shape[dim]  # L - 1 adds per line
    return Count("elementwise", adds=adds, macs=adds)


def count_bilinear(args, kwargs, out) -> Count:
    x1, w = args[0], args[2]  # x1 (N, I), x2 (N, J), w (O, I, J)
    rows, (o, i, j) = x1.shape[0], w.shape
    macs = rows * o * i * (j + 1)  # per output: W_o x2 (I J MACs), then x1 . (W_o x2) (I)
    bwd = macs * (int(needs_grad(x1)) + int(needs_grad(w)))
    return Count("linear", macs, macs, macs, bwd)


class Cumsum(nn.Module):
    """torch.cumsum and Tensor.cumsum."""

    def forward(self, x):  # (B, L)
        return torch.cumsum(x, 1) + x.cumsum(dim=0)  # the function and the method


@pytest.fixture
def registered():
    register_handler(torch.cumsum, count_cumsum)
    saved = handler_of(F.bilinear)  # a built-in one: replaced by the example, then put back
    register_handler("bilinear", count_bilinear, replace=True)
    yield
    unregister_handler("cumsum")
    register_handler(F.bilinear, saved.handler, replace=True)


def test_a_registered_op_is_counted_by_its_closed_form(registered):
    report = count_ops(Cumsum(), [3, 7])
    rows = [r for r in report.layers if r.op == "cumsum"]
    assert [r.adds for r in rows] == [3 * (7 - 1), (3 - 1) * 7]  # L - 1 adds per line
    assert rows[0].path == "" and rows[0].out_shape == [3, 7] and rows[0].in_shape == [3, 7]
    assert rows[0].read_bytes == 4 * 21 and rows[0].write_bytes == 4 * 21  # the counter's bytes
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
    assert handler_of(torch.cumsum) is None
    assert [r.family for r in report.layers] == ["elementwise"]  # the + only
    assert report.not_counted == {"cumsum": ["<model>"]}  # listed, never dropped silently


def test_handlers_for_one_count_only():
    """count_ops(handlers=) copies the table: added, overridden or removed for that call."""
    report = count_ops(Cumsum(), [3, 7], handlers={torch.cumsum: count_cumsum})
    assert [r.op for r in report.layers] == ["cumsum", "cumsum", "add"]
    assert handler_of(torch.cumsum) is None  # the registered table is untouched
    assert count_ops(Cumsum(), [3, 7]).not_counted == {"cumsum": ["<model>"]}
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    half = count_ops(mlp, [2, 4], handlers={
        F.linear: lambda a, k, out: Count("linear", macs=1), "relu": None})
    assert [(r.op, r.macs) for r in half.layers] == [("linear", 1)]
    assert "relu" in half.not_counted
    assert count_ops(mlp, [2, 4]).total_macs() == 2 * 4 * 8


def test_keyed_by_the_function_object_not_its_name():
    """A Python function that dispatches through __torch_function__ under a torch op's name is
    not that op."""
    from torch.overrides import handle_torch_function, has_torch_function_unary

    def relu(x):  # not torch's relu
        if has_torch_function_unary(x):
            return handle_torch_function(relu, (x,), x)
        return x * 2

    class M(nn.Module):
        def forward(self, x):
            return relu(x)

    report = count_ops(M(), [2, 3])
    assert report.layers == []  # never counted as a torch relu
    assert report.not_counted == {"relu": ["<model>"]}  # listed as a call without a handler
    assert F.relu in resolve("relu") and relu not in resolve("relu")
    assert torch.Tensor.cumsum in resolve(torch.cumsum)  # the function and its method


def test_registering_twice_needs_replace(registered):
    with pytest.raises(ValueError, match="'cumsum' already has a handler"):
        register_handler("cumsum", count_cumsum)

    def fail(args, kwargs, out):
        raise CountError("no cumsum here")

    register_handler("cumsum", fail, replace=True)
    with pytest.raises(ShapeError, match=r"layer '<model>' \(Cumsum\): no cumsum here"):
        count_ops(Cumsum(), [3, 7])


def test_precheck_runs_before_the_op(registered):
    def precheck(args, kwargs):
        if args[0].dim() != 2:
            raise CountError(f"expected 2 dims, got {list(args[0].shape)}")

    register_handler(torch.cumsum, count_cumsum, precheck=precheck, replace=True)
    with pytest.raises(ShapeError, match=r"expected 2 dims, got \[3\]"):
        count_ops(Cumsum(), [3])


def test_bad_registrations():
    assert op_name(torch.cumsum) == op_name("cumsum") == "cumsum"
    with pytest.raises(ValueError, match="'not_an_op_anywhere' is not a torch function"):
        register_handler("not_an_op_anywhere", count_cumsum)
    with pytest.raises(ValueError, match="not a torch function"):
        register_handler(lambda x: x, count_cumsum)
    with pytest.raises(ValueError, match="not a torch function"):
        register_handler(object(), count_cumsum)
    with pytest.raises(TypeError, match="must be callable"):
        register_handler("cumsum", 3)
    with pytest.raises(TypeError, match="must be callable"):
        count_ops(Cumsum(), [3, 7], handlers={torch.cumsum: 3})
    assert handler_of(torch.cumsum) is None
    unregister_handler("cumsum")  # no error when not counted
    with pytest.raises(ShapeError, match="returned 3, not a Count"):  # one line, the layer
        count_ops(Cumsum(), [3, 7], handlers={torch.cumsum: lambda a, k, o: 3})


def test_every_builtin_name_is_a_torch_function():
    """A built-in handler meant for a name this torch has no function of would count nothing."""
    missing = [n for keys, _ in builtin.DECLARED for n in keys
               if isinstance(n, str) and n not in torch_functions()]
    assert missing == []
    assert any("conv2d" in keys for keys, _ in builtin.DECLARED)  # the names are read


def test_dnnlab_layers_go_through_the_same_table():
    from dnnlab.functional import smooth_max
    from dnnlab.smoothmax.modules import SmoothMaxPool2d

    assert isinstance(table()[smooth_max], Entry) and SmoothMaxPool2d in table()
    pool = nn.Sequential(SmoothMaxPool2d(2.0, 2))
    (row,) = count_ops(pool, [1, 3, 8, 8]).layers
    assert row.op == "smooth_max" and row.extra["entries"] == 3 * 16 * 4
    # overridden like any handler, for one count
    (row,) = count_ops(pool, [1, 3, 8, 8], handlers={
        SmoothMaxPool2d: lambda a, k, out: Count("pool", macs=7)}).layers
    assert (row.family, row.macs, row.path) == ("pool", 7, "0")


def test_count_bias_is_applied_by_the_counter():
    lin = nn.Linear(4, 8)
    (with_bias,) = count_ops(lin, [2, 4]).layers
    (without,) = count_ops(lin, [2, 4], count_bias=False).layers
    assert with_bias.adds - without.adds == with_bias.bias_adds == 16 and without.bias_adds == 0
    assert with_bias.mults == without.mults == 2 * 4 * 8
