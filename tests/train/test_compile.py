"""torch.compile of dnnlab's layers (trainer.compile=true): dynamo captures SmoothMaxPool2d,
Conv2d and the whole SmoothMaxCNN, forward and forward + backward, as one graph with every
dnnlab autograd.Function in it and no graph break; a compiled step's gradients equal the eager
ones (ties and -inf windows included); (slow) the compiled default run reaches the eager run's
accuracy and records its compile time in results.json.

`torch._dynamo.explain` alone is not enough: when dynamo cannot trace an autograd.Function's
backward it may run the Function eagerly and compile its forward as a frame of its own, and
explain then reports one graph and no break. So the graphs are also checked to hold each dnnlab
Function as an `autograd_function_apply` node, and a failure names dynamo's reason (from a
fullgraph compile)."""
from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dnnlab.nn import Conv2d
from dnnlab.smoothmax.modules import SmoothMaxPool2d
from dnnlab.train.model import SmoothMaxCNN

BETAS = [4.0, math.inf]
HOP = "autograd_function_apply"  # an autograd.Function captured whole (forward and backward)
CHANNELS = (32, 64, 64)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _autograd_ops():
    """Let dynamo trace Tensor.backward() into the graph (explain of a whole training step)."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip(f"torch {torch.__version__}: dynamo cannot trace Tensor.backward()")
    return torch._dynamo.config.patch(trace_autograd_ops=True)


def _why(fn, *args, autograd: bool = False) -> str:
    """Dynamo's reason for a break, from a fullgraph compile (tracing only, backend eager)."""
    torch._dynamo.reset()
    try:
        with _autograd_ops() if autograd else contextlib.nullcontext():
            torch.compile(fn, backend="eager", fullgraph=True)(*args)
    except Exception as err:  # noqa: BLE001 - dynamo's Unsupported, UserError, ...
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        where = list(dict.fromkeys(ln.strip() for ln in lines
                                   if ln.strip().startswith('File "') and "dnnlab" in ln))
        return f"{type(err).__name__}: {lines[0] if lines else ''} " + " <- ".join(where[-3:])
    finally:
        torch._dynamo.reset()
    return "a fullgraph compile raised nothing"


def _check_one_graph(fn, *args, functions: int, autograd: bool = False) -> None:
    """fn(*args) traces as one graph, no break, with `functions` dnnlab autograd.Functions."""
    with _autograd_ops() if autograd else contextlib.nullcontext():
        ex = torch._dynamo.explain(fn)(*args)
    captured = sum(HOP in str(n.target) for g in ex.graphs for n in g.graph.nodes)
    reasons = [f"{b.reason.strip().splitlines()[0]} at " + " <- ".join(
        f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in b.user_stack)
        for b in ex.break_reasons]
    ok = ex.graph_count == 1 and ex.graph_break_count == 0 and captured == functions
    assert ok, (f"{ex.graph_count} graphs, {ex.graph_break_count} breaks, {captured} of "
                f"{functions} dnnlab Functions captured; explain's reasons: {reasons}; "
                f"fullgraph: {_why(fn, *args, autograd=autograd)}")


def _pool_input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.relu(torch.randn(4, 8, 8, 8)).requires_grad_(True)  # ReLU zeros: ties


@pytest.mark.parametrize("beta", BETAS, ids=["beta4", "betainf"])
@pytest.mark.parametrize("kernel_size", [2, None], ids=["2x2", "global"])
def test_pooling_has_no_graph_break(beta, kernel_size):
    pool = SmoothMaxPool2d(beta, kernel_size=kernel_size, normalized=True, ties="shared")
    _check_one_graph(pool, _pool_input(), functions=1)


@pytest.mark.parametrize("beta", BETAS, ids=["beta4", "betainf"])
@pytest.mark.parametrize("kernel_size", [2, None], ids=["2x2", "global"])
def test_pooling_forward_backward_has_no_graph_break(beta, kernel_size):
    pool = SmoothMaxPool2d(beta, kernel_size=kernel_size, normalized=True, ties="shared")

    def step(x):
        out = pool(x)
        out.sum().backward()
        return out.detach()
    _check_one_graph(step, _pool_input(), functions=1, autograd=True)


def test_conv2d_has_no_graph_break():
    conv = Conv2d(8, 4, 3, padding=1)
    _check_one_graph(conv, _pool_input(), functions=1)

    def step(x):
        out = conv(x)
        out.square().sum().backward()
        return out.detach()
    torch._dynamo.reset()
    _check_one_graph(step, _pool_input(), functions=1, autograd=True)


def _cnn(beta: float, channels=CHANNELS, dtype=torch.float32):
    torch.manual_seed(0)
    model = SmoothMaxCNN(1, 10, channels, beta=beta, normalized=True).to(dtype)
    x = torch.randn(16, 1, 8, 8, dtype=dtype)  # digits-sized images
    return model, x, torch.randint(0, 10, (16,))


@pytest.mark.parametrize("beta", BETAS, ids=["beta4", "betainf"])
def test_smoothmax_cnn_forward_has_no_graph_break(beta):
    model, x, _ = _cnn(beta)
    _check_one_graph(model, x, functions=5)  # 3 convolutions, 2 poolings


@pytest.mark.parametrize("beta", BETAS, ids=["beta4", "betainf"])
def test_smoothmax_cnn_loss_backward_has_no_graph_break(beta):
    model, x, y = _cnn(beta)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()
    _check_one_graph(step, x, y, functions=5, autograd=True)


def _grads(model, forward, x, y) -> dict[str, torch.Tensor]:
    """One training step's loss and parameter gradients, the forward through `forward`."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(x), y)
    loss.backward()
    return {"loss": loss.detach()} | {n: p.grad.clone() for n, p in model.named_parameters()}


def _check_compiled_grads(beta: float, backend: str) -> None:
    model, x, y = _cnn(beta, channels=(4, 8, 8), dtype=torch.float64)
    eager = _grads(model, model, x, y)
    compiled = _grads(model, torch.compile(model, backend=backend), x, y)
    for name, g in eager.items():
        torch.testing.assert_close(compiled[name], g, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("beta", BETAS, ids=["beta4", "betainf"])
def test_compiled_step_gradients_equal_eager_aot(beta):
    """Dynamo's and AOTAutograd's capture (no code generation: a few seconds)."""
    _check_compiled_grads(beta, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("beta", BETAS, ids=["beta4", "betainf"])
def test_compiled_step_gradients_equal_eager_inductor(beta):
    """The trainer's backend, inductor (20-30 s per case on a 2-core CPU)."""
    _check_compiled_grads(beta, "inductor")


def _tied_windows() -> torch.Tensor:
    """(1, 4, 2, 4) float64: 2x2 windows with 3 and 4 tied maxima, an all -inf window, a NaN,
    and planes (global pooling) with the same."""
    inf, nan = math.inf, math.nan
    planes = [[[1, 1, 2, 0], [1, 0, 2, 2]],
              [[-inf, -inf, 3, 3], [-inf, -inf, 3, 1]],
              [[nan, 0, 5, -1], [1, 2, 5, 5]],
              [[-inf, -inf, -inf, -inf], [-inf, -inf, -inf, -inf]]]
    return torch.tensor([planes], dtype=torch.float64)


@pytest.mark.parametrize("beta", BETAS, ids=["beta4", "betainf"])
@pytest.mark.parametrize("kernel_size", [2, None], ids=["2x2", "global"])
def test_compiled_pooling_gradient_with_ties_equals_eager(beta, kernel_size):
    """Ties share the gradient (docs/math.md (1c)) in the compiled backward as in the eager
    one: 1/3 each for three tied maxima, which autograd of a chain of torch.maximum (1/4, 1/4,
    1/2) would not give; an all -inf window or plane and a NaN get 0."""
    pool = SmoothMaxPool2d(beta, kernel_size=kernel_size, normalized=True, ties="shared")
    x = _tied_windows()
    g = torch.linspace(0.5, 2.0, pool(x).numel(), dtype=torch.float64).view(pool(x).shape)
    xe = x.clone().requires_grad_(True)
    (ge,) = torch.autograd.grad(pool(xe), xe, g)
    xc = x.clone().requires_grad_(True)
    (gc,) = torch.autograd.grad(torch.compile(pool, backend="aot_eager")(xc), xc, g)
    torch.testing.assert_close(gc, ge, rtol=0, atol=1e-12, equal_nan=True)
    if math.isinf(beta) and kernel_size == 2:  # the window [[1, 1], [1, 0]]: 1/3 each
        assert torch.allclose(ge[0, 0, :, :2].flatten(), g[0, 0, 0, 0] * torch.tensor(
            [1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64))


@pytest.mark.slow
def test_compiled_training_reaches_eager_accuracy(pipeline, tmp_path):
    """The default run (digits, beta = 4, 10 epochs), eager and trainer.compile=true."""
    res = {}
    for compiled in ("false", "true"):
        out = tmp_path / f"compile_{compiled}"
        proc = pipeline("train", f"hydra.run.dir={out}", f"trainer.compile={compiled}",
                        "wandb.mode=disabled", "trainer.progress=false")
        assert proc.returncode == 0, proc.stderr[-3000:]
        res[compiled] = json.loads((out / "results.json").read_text())
    eager, comp = res["false"], res["true"]
    assert eager["epochs"] == comp["epochs"] == 10
    assert abs(comp["test_accuracy"] - eager["test_accuracy"]) <= 0.01, (
        comp["test_accuracy"], eager["test_accuracy"])
    assert eager.get("compile_seconds") is None
    assert comp["compile_seconds"] is not None and comp["compile_seconds"] > 0


def test_graphs_compiled_counts_what_dynamo_compiles():
    from dnnlab.core.torch_private import graphs_compiled

    torch.compiler.reset()
    before = graphs_compiled()
    f = torch.compile(lambda x: torch.sin(x) * 2, backend="eager")
    f(torch.ones(3))
    f(torch.ones(3))  # the same graph again: no new one
    assert graphs_compiled() == before + 1
