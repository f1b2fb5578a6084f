"""swap_pools on whole networks (issue 29, "models, not only layers"): torchvision resnet18,
vgg11 and googlenet, and a network with a shared pool followed by in-place ReLUs, each trained
a few steps. At beta = inf with ties="first" every output, loss, gradient and updated parameter
equals the native network's exactly; at finite beta the shared-pool network equals the same
network with plain-torch logsumexp pooling (tests/smoothmax/references.py)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import googlenet, resnet18, vgg11

from dnnlab.nn import SmoothMaxPool2d, swap_pools
from tests.smoothmax.references import pool_reference


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
