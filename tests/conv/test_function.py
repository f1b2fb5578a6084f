"""ConvNdFunction (docs/math.md (3b)): torch.autograd.gradcheck in float64, both weight-gradient
modes, and the three gradient functions against torch's; dnnlab's Conv layers under torch.func
(vmap(grad), jvp) and forward AD against torch's own convolution in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from dnnlab.conv.function import (
    ConvNdFunction,
    conv_bias_grad,
    conv_input_grad,
    conv_weight_grad,
    weight_grad_mode,
)
from dnnlab.nn import Conv1d, Conv2d

f64 = torch.float64


@pytest.fixture
def one_thread():
    """gradcheck runs ~1000 tiny convolutions: one thread each, so no OpenMP barrier waits on a
    thread that a busy machine has descheduled (seconds per test otherwise)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("mode", ["aten", "explicit"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_gradcheck_function(n, mode, one_thread):
    g = torch.Generator().manual_seed(n)
    size = {1: 9, 2: 6, 3: 4}[n]  # small: gradcheck differentiates numerically entry by entry
    x = torch.randn(2, 4, *[size] * n, generator=g, dtype=f64, requires_grad=True)
    w = torch.randn(4, 2, *[3] * n, generator=g, dtype=f64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=f64, requires_grad=True)
    stride, pad, dil = (2,) * n, (1,) * n, (1,) + (2,) * (n - 1)
    with weight_grad_mode(mode):
        assert torch.autograd.gradcheck(
            lambda x, w, b: ConvNdFunction.apply(x, w, b, stride, pad, dil, 2), (x, w, b))


def test_the_three_gradients_against_torch():
    """conv_input_grad / conv_weight_grad (both modes) / conv_bias_grad equal torch's
    convolution_backward (docs/math.md (3a)), stride, padding, dilation and groups included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 11, 9, generator=g, dtype=f64)
    w = torch.randn(6, 2, 3, 2, generator=g, dtype=f64)
    conf = ((2, 1), (1, 0), (1, 2), 2)
    y = torch.nn.functional.conv2d(x, w, None, *conf)
    v = torch.randn(y.shape, generator=g, dtype=f64)  # (B, C_out, H_out, W_out)
    gx, gw, gb = torch.ops.aten.convolution_backward(
        v, x, w, [6], conf[0], conf[1], conf[2], False, (0, 0), conf[3], (True, True, True))
    assert torch.allclose(conv_input_grad(v, w, x.shape, *conf), gx, atol=1e-12)
    for mode in ("aten", "explicit"):
        assert torch.allclose(conv_weight_grad(x, w, v, *conf, mode=mode), gw, atol=1e-12)
    assert torch.allclose(conv_bias_grad(v), gb, atol=1e-12)


def test_weight_grad_mode_is_scoped_and_checked():
    with pytest.raises(ValueError, match="'aten' or 'explicit'"):
        with weight_grad_mode("fast"):
            pass

    def weight_grad_ops() -> set:
        """The aten ops conv_weight_grad (no mode given) runs, its result checked against
        torch.nn.grad.conv1d_weight in float64."""
        x, w = torch.randn(2, 3, 9, dtype=f64), torch.randn(4, 3, 3, dtype=f64)
        g = torch.randn(2, 4, 7, dtype=f64)  # (B, C_out, L_out)
        with _Ops() as ops:
            gw = conv_weight_grad(x, w, g, (1,), (0,), (1,), 1)
        assert torch.allclose(gw, torch.nn.grad.conv1d_weight(x, w.shape, g), atol=1e-12)
        return ops.seen

    assert "convolution_backward" in weight_grad_ops()  # default: torch's weight kernel
    with weight_grad_mode("explicit"):  # (3a) written out: a forward convolution
        ops = weight_grad_ops()
        assert "convolution" in ops and "convolution_backward" not in ops
    assert "convolution_backward" in weight_grad_ops()  # the default again on exit


class _Ops(TorchDispatchMode):
    """The names of the aten ops run under it."""

    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_no_weight_grad_saves_no_input():
    x = torch.randn(2, 3, 8, dtype=f64, requires_grad=True)
    w = torch.randn(4, 3, 3, dtype=f64)
    y = ConvNdFunction.apply(x, w, None, (1,), (0,), (1,), 1)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    ref = torch.nn.functional.conv_transpose1d(torch.ones_like(y), w)
    assert torch.allclose(gx, ref)


TOL = 1e-10


def _x(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("cls,shape", [(Conv2d, (4, 2, 5, 5)), (Conv1d, (4, 2, 7))])
def test_per_sample_grads_equal_loop(cls, shape):
    torch.manual_seed(0)
    conv = cls(2, 3, 3, padding=1, stride=2).double()
    params = {k: v.detach() for k, v in conv.named_parameters()}
    x = _x(*shape)

    def loss(p, r):
        return (functional_call(conv, p, (r[None],)) ** 2).sum()

    per = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(shape[0]):
        conv.zero_grad()
        loss(dict(conv.named_parameters()), x[i]).backward()
        for k, v in conv.named_parameters():
            assert (per[k][i] - v.grad).abs().max() < TOL


def test_jvp_matches_torch_conv():
    x, w, b = _x(2, 2, 5, 5), _x(4, 1, 3, 3, seed=1), _x(4, seed=2)
    tx, tw, tb = _x(2, 2, 5, 5, seed=3), _x(4, 1, 3, 3, seed=4), _x(4, seed=5)
    conf = ((1, 1), (1, 1), (1, 1), 2)
    _, out = jvp(lambda a, c, d: ConvNdFunction.apply(a, c, d, *conf), (x, w, b), (tx, tw, tb))
    _, ref = jvp(lambda a, c, d: F.conv2d(a, c, d, *conf), (x, w, b), (tx, tw, tb))
    assert (out - ref).abs().max() < TOL


def test_gradcheck_forward_ad():
    x = _x(2, 2, 4, 4).requires_grad_(True)
    w = _x(3, 2, 2, 2, seed=1).requires_grad_(True)
    b = _x(3, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, c, d: ConvNdFunction.apply(a, c, d, (2, 1), (1, 0), (1, 1), 1), (x, w, b),
        check_forward_ad=True)
