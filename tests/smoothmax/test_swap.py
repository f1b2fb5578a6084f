"""dnnlab.smoothmax.swap (dnnlab.nn.swap_pools) on real torchvision networks: at beta = inf with
ties="first" the swapped resnet18 and vgg11 compute the native outputs and gradients bit for
bit; a gradient penalty through swap_convs + swap_pools resnet18 equals the native one in
float64; the refusals name the module path. Whole networks trained a few steps (torchvision
resnet18, vgg11, googlenet, and a network with a shared pool followed by in-place ReLUs): at
beta = inf with ties="first" every output, loss, gradient and updated parameter equals the
native network's exactly; at finite beta the shared-pool network equals the same network with
plain-torch logsumexp pooling (tests/smoothmax/references.py)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import googlenet, resnet18, vgg11

from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.nn import SmoothAdaptiveMaxPool2d, SmoothMaxPool2d, swap_convs, swap_pools
from tests.smoothmax.references import pool_reference


def _pair_of(build, dtype=torch.float32):
    torch.manual_seed(0)
    native = build(weights=None).to(dtype).eval()
    torch.manual_seed(0)
    ours = build(weights=None).to(dtype).eval()
    assert all(torch.equal(a, b) for a, b in zip(native.parameters(), ours.parameters()))
    return native, ours


def _grads(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    loss = F.cross_entropy(y, torch.arange(y.shape[0]))
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return y, grads


@pytest.mark.parametrize("build", [resnet18, pytest.param(vgg11, marks=pytest.mark.slow)])
def test_swapped_network_at_inf_ties_first_is_native_bit_for_bit(build):
    native, ours = _pair_of(build)
    assert swap_pools(ours, math.inf, ties="first") is ours
    pools = [m for m in ours.modules() if isinstance(m, SmoothMaxPool2d)]
    assert pools and not any(isinstance(m, nn.MaxPool2d) for m in ours.modules())
    ref = next(m for m in native.modules() if isinstance(m, nn.MaxPool2d))
    assert (pools[0].kernel_size, pools[0].padding) == (nn.modules.utils._pair(ref.kernel_size),
                                                        nn.modules.utils._pair(ref.padding))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    (y_ref, g_ref), (y, g) = _grads(native, x), _grads(ours, x)
    assert torch.equal(y, y_ref)
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref))


class _LogSumExpPool(nn.Module):
    """The reference: MaxPool2d's windows by F.unfold (padded with -inf), then
    torch.logsumexp(beta w) / beta (docs/math.md (1a)); torch's autograd throughout."""

    def __init__(self, beta, pool: nn.MaxPool2d):
        super().__init__()
        self.beta, self.pool = beta, pool

    def forward(self, x):
        k, s, p = self.pool.kernel_size, self.pool.stride, self.pool.padding
        ho, wo = self.pool(x.detach()).shape[2:]
        xp = F.pad(x, (p, p, p, p), value=-math.inf)
        cols = F.unfold(xp, k, stride=s).view(x.shape[0], x.shape[1], k * k, ho, wo)
        return torch.logsumexp(self.beta * cols, 2) / self.beta  # (B, C, Ho, Wo)


def _gradient_penalty(model, x):
    """||d loss / d x||^2 and its gradient in the parameters (create_graph=True)."""
    x = x.clone().requires_grad_()
    loss = model(x).logsumexp(1).sum()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    penalty = gx.pow(2).sum()
    return penalty, torch.autograd.grad(penalty, list(model.parameters()))


@pytest.mark.slow  # about 10 s each: double backward through resnet18 in float64
@pytest.mark.parametrize("beta", [math.inf, 3.0], ids=["inf", "beta3"])
def test_gradient_penalty_through_swapped_resnet18_equals_native(beta):
    """At inf (ties="first") against the native resnet18; at finite beta against resnet18 whose
    max pooling is the logsumexp reference. float64, agreement to 1e-10."""
    native, ours = _pair_of(resnet18, torch.float64)
    if not math.isinf(beta):
        native.maxpool = _LogSumExpPool(beta, native.maxpool)
    swap_pools(swap_convs(ours), beta, ties="first")
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (p_ref, g_ref), (p, g) = _gradient_penalty(native, x), _gradient_penalty(ours, x)
    assert p_ref > 0
    torch.testing.assert_close(p, p_ref, rtol=1e-10, atol=0)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10 * (1 + b.abs().max().item()))
    assert any(bool((a != 0).any()) for a in g[:1])  # conv1's second derivatives are not zero


def test_adaptive_max_pool_is_swapped_for_whole_windows():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveMaxPool2d((2, 2)),
                        nn.Conv2d(2, 2, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    y_ref = net(x)
    swap_pools(net, math.inf, ties="first")
    assert all(isinstance(net[i], SmoothAdaptiveMaxPool2d) for i in (1, 3))
    assert torch.equal(net(x), y_ref)
    net = swap_pools(nn.Sequential(nn.AdaptiveMaxPool2d((2, 4))), 2.0)
    ref = F.unfold(x, (4, 2), stride=(4, 2)).view(3, 1, 8, 2, 4)
    torch.testing.assert_close(net(x), torch.logsumexp(2.0 * ref, 2) / 2.0, rtol=0, atol=1e-6)
    with pytest.raises(ShapeError, match=r"SmoothMaxPool2d 0: output size \(2, 4\) does not "
                                         r"divide the input's \(8, 7\)"):
        net(torch.randn(1, 1, 8, 7))


def test_return_indices_is_refused_naming_the_path():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2, return_indices=True)))
    with pytest.raises(ConfigError, match=r"swap_pools: 0\.1 \(MaxPool2d\) has "
                                          r"return_indices=True"):
        swap_pools(net, 2.0)
    assert isinstance(net[0][1], nn.MaxPool2d)  # nothing swapped


class SharedPool(nn.Module):
    """One MaxPool2d registered at two paths and called three times, in-place ReLUs after it."""

    def __init__(self, pool: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = pool if pool is not None else nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.again = self.pool  # the same instance at a second path
        self.head = nn.Linear(8, 5)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.pool(self.conv1(x)))
        x = self.relu(self.again(self.conv2(x)))
        x = self.relu(self.pool(x))
        return self.head(x.mean((2, 3)))


def _train(model, x, target, steps=3):
    """A few SGD steps; (outputs, losses, final parameters)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    outs, losses = [], []
    for _ in range(steps):
        opt.zero_grad()
        y = model(x)
        y = y.logits if hasattr(y, "logits") else y
        loss = F.cross_entropy(y, target)
        loss.backward()
        opt.step()
        outs.append(y.detach())
        losses.append(loss.detach())
    return outs, losses, [p.detach().clone() for p in model.parameters()]


def _same_as_native(build, shape, classes):
    torch.manual_seed(0)
    native = build()
    ours = swap_pools(copy.deepcopy(native), math.inf, ties="first")
    assert any(isinstance(m, SmoothMaxPool2d) for m in ours.modules())
    assert not any(type(m) in (nn.MaxPool2d, nn.AdaptiveMaxPool2d) for m in ours.modules())
    x = torch.randn(shape)
    target = torch.arange(shape[0]) % classes
    torch.manual_seed(1)  # the same dropout masks (vgg11) in both runs
    a = _train(native, x, target)
    torch.manual_seed(1)
    b = _train(ours, x, target)
    for u, v in zip(a, b):
        assert all(torch.equal(p, q) for p, q in zip(u, v))
    # and at finite beta the swapped network trains: finite losses
    torch.manual_seed(0)
    smooth = swap_pools(build(), 8.0)
    _, losses, _ = _train(smooth, x, target, steps=2)
    assert all(torch.isfinite(v) for v in losses)


def test_shared_pool_inplace_relu_native():
    _same_as_native(SharedPool, (2, 3, 16, 16), 5)


def test_shared_pool_inplace_relu_finite_beta_against_logsumexp():
    class Ref(nn.Module):
        def forward(self, x):
            return pool_reference(x, 4.0, (3, 3), (2, 2), (1, 1), (1, 1), False)

    torch.manual_seed(0)
    ref = SharedPool(Ref()).double()
    ours = swap_pools(copy.deepcopy(SharedPool()).double(), 4.0)
    ours.load_state_dict(ref.state_dict())
    assert ours.pool is ours.again and isinstance(ours.pool, SmoothMaxPool2d)
    x, target = torch.randn(2, 3, 12, 12, dtype=torch.float64), torch.tensor([1, 3])
    a, b = _train(ref, x, target), _train(ours, x, target)
    for u, v in zip(a, b):
        assert all(torch.allclose(p, q, rtol=1e-9, atol=1e-11) for p, q in zip(u, v))


@pytest.mark.slow
def test_resnet18_native():
    _same_as_native(lambda: resnet18(weights=None, num_classes=4), (2, 3, 32, 32), 4)


@pytest.mark.slow
def test_vgg11_native():
    _same_as_native(lambda: vgg11(weights=None, num_classes=4), (2, 3, 32, 32), 4)


@pytest.mark.slow
def test_googlenet_native():
    _same_as_native(lambda: googlenet(weights=None, num_classes=4, aux_logits=False,
                                      init_weights=True), (2, 3, 64, 64), 4)
