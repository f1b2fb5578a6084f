"""ConvNdFunction (docs/math.md (3b)): torch.autograd.gradcheck in float64, both weight-gradient
modes, and the three gradient functions against torch's."""
import pytest
import torch

from dnnlab.conv.function import (
    ConvNdFunction,
    conv_bias_grad,
    conv_input_grad,
    conv_weight_grad,
    weight_grad_mode,
)

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
    from dnnlab.conv import function

    with weight_grad_mode("explicit"):
        assert function._WEIGHT_GRAD == "explicit"
    assert function._WEIGHT_GRAD == "aten"


def test_no_weight_grad_saves_no_input():
    x = torch.randn(2, 3, 8, dtype=f64, requires_grad=True)
    w = torch.randn(4, 3, 3, dtype=f64)
    y = ConvNdFunction.apply(x, w, None, (1,), (0,), (1,), 1)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    ref = torch.nn.functional.conv_transpose1d(torch.ones_like(y), w)
    assert torch.allclose(gx, ref)
