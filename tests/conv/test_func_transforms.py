"""dnnlab's Conv layers (ConvNdFunction) under torch.func (vmap(grad), jvp) and forward AD,
against torch's own convolution in float64."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from dnnlab.conv.function import ConvNdFunction
from dnnlab.nn import Conv1d, Conv2d

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
