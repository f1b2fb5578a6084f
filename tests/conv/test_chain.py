"""The chain (docs/math.md (3)): its gradients by matrix, conv, autograd and dnnlab's Conv1d agree
(float64), and bad specs name the layer."""
import pytest
import torch

from dnnlab.conv.chain import (
    ACTIVATIONS,
    METHODS,
    Activation,
    ChainSpec,
    grads_autograd,
    grads_conv,
    grads_dnnlab,
    grads_matrix,
    init_params,
)
from dnnlab.core.errors import ConfigError, ShapeError

f64 = torch.float64


def maxdiff(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


SPECS = [
    ChainSpec(n0=16, filters=[3], activation="identity"),
    ChainSpec(n0=24, filters=[3, 5, 2], activation="tanh"),
    ChainSpec(n0=40, filters=[4, 4, 4, 4], activation="sigmoid", bias=[True, False, True, False]),
    ChainSpec(n0=31, filters=[7, 1, 3], activation="relu"),
    ChainSpec(n0=20, filters=[2, 3], activation="softplus"),
    ChainSpec(n0=20, filters=[5, 5], activation="gelu", bias=False),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.activation}-{s.filters}")
def test_chain_four_ways_agree(spec):
    params = init_params(spec, seed=3, dtype=f64)
    g = torch.Generator().manual_seed(7)
    y0 = torch.randn(5, spec.n0, generator=g, dtype=f64)
    u = torch.randn(5, spec.sizes()[-1], generator=g, dtype=f64)
    m, c, a, d = (fn(spec, params, y0, u)
                  for fn in (grads_matrix, grads_conv, grads_autograd, grads_dnnlab))
    expect = ["y"] + [k for l in range(1, spec.depth + 1)
                      for k in ([f"w{l}", f"b{l}"] if spec.has_bias(l) else [f"w{l}"])]
    assert list(m) == list(c) == list(a) == list(d) == expect
    for k in expect:
        assert m[k].shape == a[k].shape == d[k].shape, k
        assert maxdiff(m[k], c[k]) <= 1e-10, k
        assert maxdiff(m[k], a[k]) <= 1e-10, k
        assert maxdiff(m[k], d[k]) <= 1e-10, k
    assert list(METHODS) == ["matrix", "conv", "autograd", "dnnlab"]


def test_chain_default_cotangent_is_sum():
    spec = ChainSpec(n0=12, filters=[3, 3])
    params = init_params(spec, dtype=f64)
    y0 = torch.randn(2, 12, dtype=f64)
    ones = torch.ones(2, spec.sizes()[-1], dtype=f64)
    a, b = grads_conv(spec, params, y0), grads_autograd(spec, params, y0, ones)
    assert all(maxdiff(a[k], b[k]) <= 1e-12 for k in a)


def test_chain_errors_name_layer():
    with pytest.raises(ShapeError, match=r"layer 3: filter size f=9 > input length n=6"):
        ChainSpec(n0=12, filters=[3, 5, 9])
    with pytest.raises(ConfigError, match="activation='swish': expected one of sigmoid, tanh, "
                                          "relu, softplus, gelu, identity"):
        ChainSpec(n0=12, filters=[3], activation="swish")


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "softplus", "gelu", "identity"])
def test_each_activations_derivative_is_autograds(name):
    """sigma' of each activation (the chain's v_l = dJ/dy_l * sigma'(z_l)) against autograd
    of sigma itself in float64, at and around 0 and into the tails. |z| <= 18: above 20
    F.softplus returns z itself (its `threshold`), whose derivative 1 differs from the true
    one, sigmoid(z), by 2e-9 there."""
    sigma, prime = ACTIVATIONS[name]
    z = torch.linspace(-18, 18, 145, dtype=f64, requires_grad=True)  # 0 included
    (want,) = torch.autograd.grad(sigma(z).sum(), z)
    assert torch.allclose(prime(z.detach()), want, rtol=1e-12, atol=1e-15)


def test_chain_bad_params_and_inputs():
    spec = ChainSpec(n0=10, filters=[3, 3], activation=Activation.tanh, bias=[True, False])
    assert spec.activation == "tanh" and spec.sizes() == [10, 8, 6]
    assert spec.matrix_bytes(8) == (8 * 10 + 6 * 8) * 8
    params = init_params(spec, dtype=f64)
    assert params[1][1] is None  # no bias in layer 2
    with pytest.raises(ShapeError, match=r"input has shape \(2, 9\), expected \(B, 10\)"):
        grads_conv(spec, params, torch.zeros(2, 9, dtype=f64))
    with pytest.raises(ShapeError, match="1 parameter pairs for 2 layers"):
        grads_conv(spec, params[:1], torch.zeros(2, 10, dtype=f64))
    with pytest.raises(ShapeError, match=r"layer 2: filter has shape \(4,\), expected \(3,\)"):
        grads_conv(spec, [params[0], (torch.zeros(4, dtype=f64), None)], torch.zeros(10))
    one = grads_matrix(spec, params, torch.ones(10, dtype=f64))  # unbatched y_0: batch of 1
    assert one["y"].shape == (1, 6)
    with pytest.raises(ConfigError, match="at least one layer"):
        ChainSpec(n0=10, filters=[])
    with pytest.raises(ConfigError, match=">= 1"):
        ChainSpec(n0=10, filters=[0])
    with pytest.raises(ConfigError, match="one per layer"):
        ChainSpec(n0=10, filters=[3], bias=[True, True])
