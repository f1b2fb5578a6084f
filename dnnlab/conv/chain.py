"""The chain: the 1-D convolutional network of docs/math.md (3), and four ways to get its gradients.

The chain, for a batch of inputs y_0 of shape (B, n_0):

    y_l = sigma(A_{w_l} y_{l-1} + b_l 1)   for l < L,
    y_L =       A_{w_L} y_{L-1} + b_L 1,

with A_w the banded Toeplitz matrix of dnnlab.conv.toeplitz, n_l = n_{l-1} - f_l + 1, and one
scalar bias b_l per layer. docs/math.md (3a) differentiates the vector y_L; to get a gradient per
parameter we reduce it with a fixed cotangent u of shape (B, n_L) (or (n_L,), broadcast over the
batch):

    objective J = sum_b <u_b, y_L,b>,  so that  dJ/dy_L = u.

With u = 1 this is the sum of the outputs. The backprop of docs/math.md (3a), with
v_l = dJ/dy_l * sigma'(z_l) (and v_L = dJ/dy_L since the last layer has no activation):

    dJ/dy_{l-1} = A_{w_l}^T v_l,    dJ/dw_l = C_{v_l^T} y_{l-1},    dJ/db_l = v_l . 1

summed over the batch. Four implementations (`METHODS`) return the same numbers:

- grads_matrix:   forms every A_w (and C_{v^T}) and multiplies: the O(n^2) reference.
- grads_conv:     docs/math.md (3b): forward by conv1d, input gradient by conv_transpose1d,
                  weight gradient by correlating y_{l-1} with v_l: O(n f), nothing n x n formed.
- grads_autograd: torch autograd through F.conv1d.
- grads_dnnlab:   the chain built from dnnlab's Conv1d (its hand-written backward, (3b)).

Each returns {"y": y_L, "w1": dJ/dw_1, "b1": dJ/db_1, ..., "wL": ..., "bL": ...}.
dnnlab.conv.scaling times the matrix and conv forms as n grows.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F

from dnnlab.conv.modules import Conv1d
from dnnlab.conv.toeplitz import toeplitz
from dnnlab.core.errors import ConfigError, ShapeError

# ----------------------------------------------------------------------------------------------
# activations: sigma and sigma' (sigma'(A_{w_l} y_{l-1} + b_l 1) of docs/math.md (3a))

_SQRT_2PI = math.sqrt(2 * math.pi)


def _gelu_prime(z: torch.Tensor) -> torch.Tensor:
    # gelu(z) = z Phi(z)  =>  gelu'(z) = Phi(z) + z phi(z)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / _SQRT_2PI
    return cdf + z * pdf


class Activation(str, Enum):
    """The chain's sigma (one for all hidden layers, docs/math.md (3)); gelu is the exact one."""

    sigmoid = "sigmoid"
    tanh = "tanh"
    relu = "relu"
    softplus = "softplus"
    gelu = "gelu"
    identity = "identity"


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    # name: (sigma, sigma')
    "sigmoid": (torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))),
    "tanh": (torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
    "relu": (torch.relu, lambda z: (z > 0).to(z.dtype)),  # sigma'(0) = 0, as torch
    "softplus": (F.softplus, torch.sigmoid),
    "gelu": (F.gelu, _gelu_prime),  # exact (erf) gelu
    "identity": (lambda z: z, torch.ones_like),
}


# ----------------------------------------------------------------------------------------------
# the chain


@dataclass
class ChainSpec:
    """The chain of docs/math.md (3): input length n0, filter sizes f_1..f_L, activation, biases.

    bias: one flag for all layers or one per layer; a layer without bias has b_l = 0 fixed and
    no "b{l}" gradient.
    """

    n0: int
    filters: list[int] = field(default_factory=lambda: [3, 3, 3])
    activation: str = "tanh"
    bias: bool | list[bool] = True

    def __post_init__(self):
        self.filters = [int(f) for f in self.filters]
        self.activation = getattr(self.activation, "value", self.activation)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation={self.activation!r}: expected one of "
                              f"{', '.join(ACTIVATIONS)}")
        if not self.filters:
            raise ConfigError("filters=[]: the chain needs at least one layer")
        if any(f < 1 for f in self.filters):
            raise ConfigError(f"filters={self.filters}: filter sizes must be >= 1")
        if isinstance(self.bias, (list, tuple)) and len(self.bias) != len(self.filters):
            raise ConfigError(f"bias={list(self.bias)}: expected {len(self.filters)} flags "
                              f"(one per layer)")
        self.sizes()  # raise ShapeError early

    @property
    def depth(self) -> int:
        return len(self.filters)

    def has_bias(self, l: int) -> bool:
        """Whether layer l (1-based) has a bias."""
        return bool(self.bias[l - 1] if isinstance(self.bias, (list, tuple)) else self.bias)

    def sizes(self) -> list[int]:
        """[n_0, n_1, ..., n_L] with n_l = n_{l-1} - f_l + 1 (docs/math.md (3))."""
        n = [int(self.n0)]
        for l, f in enumerate(self.filters, start=1):
            if f > n[-1]:
                raise ShapeError(f"layer {l}: filter size f={f} > input length n={n[-1]}")
            n.append(n[-1] - f + 1)
        return n

    def matrix_bytes(self, itemsize: int = 8) -> int:
        """Bytes of all the A_{w_l} matrices (n_l x n_{l-1} each) that the matrix form builds."""
        n = self.sizes()
        return sum(n[l] * n[l - 1] for l in range(1, len(n))) * itemsize


Params = list[tuple[torch.Tensor, torch.Tensor | None]]


def init_params(spec: ChainSpec, seed: int | torch.Generator = 0,
                dtype: torch.dtype = torch.float64, device="cpu") -> Params:
    """[(w_1, b_1), ..., (w_L, b_L)]: w_l ~ N(0, 1/f_l) of shape (f_l,), b_l ~ N(0, 0.1^2) a
    0-dim tensor (None where the layer has no bias)."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    params = []
    for l, f in enumerate(spec.filters, start=1):
        w = torch.randn(f, generator=g, dtype=dtype) / math.sqrt(f)
        b = 0.1 * torch.randn((), generator=g, dtype=dtype) if spec.has_bias(l) else None
        params.append((w.to(device), None if b is None else b.to(device)))
    return params


def _check(spec: ChainSpec, params: Params, y0: torch.Tensor, u: torch.Tensor | None):
    """Validate shapes; return (y0 as (B, n_0), u as (B, n_L))."""
    n = spec.sizes()
    if len(params) != spec.depth:
        raise ShapeError(f"chain: {len(params)} parameter pairs for {spec.depth} layers")
    for l, ((w, _), f) in enumerate(zip(params, spec.filters), start=1):
        if w.shape != (f,):
            raise ShapeError(f"layer {l}: filter has shape {tuple(w.shape)}, expected ({f},)")
    if y0.dim() == 1:
        y0 = y0[None]
    if y0.dim() != 2 or y0.shape[1] != n[0]:
        raise ShapeError(f"chain: input has shape {tuple(y0.shape)}, expected (B, {n[0]})")
    if u is None:
        u = torch.ones_like(y0[:, : n[-1]])  # J = sum of the outputs
    u = torch.broadcast_to(u, (y0.shape[0], n[-1]))
    return y0, u


def _bias(b):
    return 0.0 if b is None else b


# ----------------------------------------------------------------------------------------------
# 1. the matrix form: the O(n^2) reference


def forward_matrix(spec: ChainSpec, params: Params, y0: torch.Tensor):
    """Forward pass with explicit A_w. Returns (y_L, cache) where cache holds what the
    backprop of docs/math.md (3a) needs: the matrices A_{w_l}, the layer inputs y_{l-1} and the
    pre-activations z_l."""
    sigma, _ = ACTIVATIONS[spec.activation]
    n = spec.sizes()
    As, ys, zs = [], [y0], []
    y = y0  # (B, n_0)
    for l, (w, b) in enumerate(params, start=1):
        A = toeplitz(w, n[l - 1])  # (n_l, n_{l-1})
        z = y @ A.T + _bias(b)  # (3): z_l = A_{w_l} y_{l-1} + b_l 1, (B, n_l)
        y = sigma(z) if l < spec.depth else z  # y_l = sigma(z_l); y_L = z_L
        As.append(A)
        zs.append(z)
        ys.append(y)
    return y, {"A": As, "y": ys, "z": zs}


def grads_matrix(spec: ChainSpec, params: Params, y0: torch.Tensor,
                 u: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The backprop of docs/math.md (3a) with A_w and C_{v^T} formed explicitly (O(n^2))."""
    y0, u = _check(spec, params, y0, u)
    _, dsigma = ACTIVATIONS[spec.activation]
    yL, cache = forward_matrix(spec, params, y0)
    out = {"y": yL}
    g = u  # dJ/dy_L, (B, n_L)
    for l in range(spec.depth, 0, -1):
        A, y_prev, z = cache["A"][l - 1], cache["y"][l - 1], cache["z"][l - 1]
        # (3a): v_l = dJ/dy_l * sigma'(A_{w_l} y_{l-1} + b_l 1); v_L = dJ/dy_L (no sigma)
        v = g * dsigma(z) if l < spec.depth else g  # (B, n_l)
        C = toeplitz(v, y_prev.shape[1])  # (B, f_l, n_{l-1}): C_{v_l^T}, one per sample
        # docs/math.md (3a): dy_L/dw_l = C_{v_l^T} y_{l-1}, summed over the batch
        out[f"w{l}"] = (C @ y_prev[:, :, None])[:, :, 0].sum(0)  # (B, f) -> (f,)
        if params[l - 1][1] is not None:
            out[f"b{l}"] = v.sum()  # docs/math.md (3a): dy_L/db_l = v_l . 1, summed over the batch
        g = v @ A  # docs/math.md (3a): dy_L/dy_{l-1} = A_{w_l}^T v_l, (B, n_{l-1})
    return _ordered(out, spec)


# ----------------------------------------------------------------------------------------------
# 2. the conv form (docs/math.md (3b)): convolution forward, transposed convolution backward


def forward_conv(spec: ChainSpec, params: Params, y0: torch.Tensor):
    """Forward pass by conv1d (docs/math.md (3b)). Returns (y_L, cache with y_{l-1} and z_l)."""
    sigma, _ = ACTIVATIONS[spec.activation]
    ys, zs = [y0], []
    y = y0  # (B, n_0)
    for l, (w, b) in enumerate(params, start=1):
        # docs/math.md (3b): A_{w_l} y_{l-1} as a correlation, never forming A_w
        z = F.conv1d(y[:, None], w[None, None])[:, 0] + _bias(b)  # (B, n_l)
        y = sigma(z) if l < spec.depth else z
        zs.append(z)
        ys.append(y)
    return y, {"y": ys, "z": zs}


def grads_conv(spec: ChainSpec, params: Params, y0: torch.Tensor,
               u: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """docs/math.md (3a) computed by convolutions (3b): O(n f), no n x n matrix."""
    y0, u = _check(spec, params, y0, u)
    _, dsigma = ACTIVATIONS[spec.activation]
    yL, cache = forward_conv(spec, params, y0)
    out = {"y": yL}
    g = u  # dJ/dy_L, (B, n_L)
    for l in range(spec.depth, 0, -1):
        w = params[l - 1][0]
        y_prev, z = cache["y"][l - 1], cache["z"][l - 1]
        v = g * dsigma(z) if l < spec.depth else g  # docs/math.md (3a): v_l, (B, n_l)
        # (3a)/(3b): dy_L/dw_l = C_{v_l^T} y_{l-1} = sum_j v_l^{(j)} y_{l-1}^{(i+j-1)}: correlate
        # y_{l-1} with v_l, batch as channels so the conv also sums over the batch
        out[f"w{l}"] = F.conv1d(y_prev[None], v[None])[0, 0]  # (1,B,n_{l-1}) * (1,B,n_l) -> (f,)
        if params[l - 1][1] is not None:
            out[f"b{l}"] = v.sum()  # docs/math.md (3a): dy_L/db_l = v_l . 1
        # docs/math.md (3a)/(3b): dy_L/dy_{l-1} = A_{w_l}^T v_l, a transposed convolution
        g = F.conv_transpose1d(v[:, None], w[None, None])[:, 0]  # (B, n_{l-1})
    return _ordered(out, spec)


# ----------------------------------------------------------------------------------------------
# 3. torch autograd through conv1d


def grads_autograd(spec: ChainSpec, params: Params, y0: torch.Tensor,
                   u: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """torch autograd through F.conv1d: the independent check."""
    y0, u = _check(spec, params, y0, u)
    sigma, _ = ACTIVATIONS[spec.activation]
    leaves, names = [], []
    ps = []
    for l, (w, b) in enumerate(params, start=1):
        w = w.detach().requires_grad_(True)
        leaves.append(w), names.append(f"w{l}")
        if b is not None:
            b = b.detach().requires_grad_(True)
            leaves.append(b), names.append(f"b{l}")
        ps.append((w, b))
    with torch.enable_grad():
        y = y0
        for l, (w, b) in enumerate(ps, start=1):
            z = F.conv1d(y[:, None], w[None, None])[:, 0] + _bias(b)
            y = sigma(z) if l < spec.depth else z
        J = (u * y).sum()  # J = sum_b <u_b, y_L,b>
        grads = torch.autograd.grad(J, leaves)
    out = {"y": y.detach(), **dict(zip(names, grads))}
    return _ordered(out, spec)


def _ordered(out: dict, spec: ChainSpec) -> dict[str, torch.Tensor]:
    keys = ["y"] + [k for l in range(1, spec.depth + 1) for k in (f"w{l}", f"b{l}") if k in out]
    return {k: out[k] for k in keys}


# ----------------------------------------------------------------------------------------------
# 4. dnnlab's Conv1d: the layer a user would put in a model


def grads_dnnlab(spec: ChainSpec, params: Params, y0: torch.Tensor,
                 u: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The chain built from dnnlab.nn.Conv1d (1 channel), gradients by its hand-written
    backward (docs/math.md (3b))."""
    y0, u = _check(spec, params, y0, u)
    sigma, _ = ACTIVATIONS[spec.activation]
    layers = []
    for w, b in params:
        conv = Conv1d(1, 1, w.numel(), bias=b is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            conv.weight.copy_(w.view(1, 1, -1))
            if b is not None:
                conv.bias.copy_(b.view(1))
        layers.append(conv)
    with torch.enable_grad():
        y = y0[:, None]  # (B, 1, n_0)
        for l, conv in enumerate(layers, start=1):
            z = conv(y)  # docs/math.md (3b): A_{w_l} y_{l-1} + b_l 1 as a convolution
            y = sigma(z) if l < spec.depth else z
        J = (u * y[:, 0]).sum()  # J = sum_b <u_b, y_L,b>
        leaves = [p for c in layers for p in (c.weight, c.bias) if p is not None]
        grads = iter(torch.autograd.grad(J, leaves))
    out = {"y": y[:, 0].detach()}
    for l, c in enumerate(layers, start=1):
        out[f"w{l}"] = next(grads).view(-1)
        if c.bias is not None:
            out[f"b{l}"] = next(grads).view(())
    return _ordered(out, spec)


METHODS = {"matrix": grads_matrix, "conv": grads_conv, "autograd": grads_autograd,
           "dnnlab": grads_dnnlab}
