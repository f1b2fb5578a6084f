"""Smooth-max layers: nu_beta = (1/beta) log sum exp(beta x) as a reduction and as pooling.

nu_beta -> max as beta -> inf with 0 <= nu_beta - max <= log(n)/beta (docs/math.md (1a)), and
grad nu_beta = softmax(beta x) (docs/math.md (1c)). The computation is
`dnnlab.smoothmax.functional.smooth_max` (pooling with non-overlapping windows has its own
4-d fast paths, the autograd Functions of `kernels.py`); these modules hold the temperature
(fixed or learnable) and choose the path once per call.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.core.beta import parse_betas
from dnnlab.core.dtypes import compute_dtype
from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.smoothmax.functional import _check_scalar_beta, smooth_max
from dnnlab.smoothmax.kernels import _apply_window_smooth_max, _GlobalMax, _window_max, traced
from dnnlab.smoothmax.windows import check_like_max_pool2d, out_size, windows

__all__ = ["SmoothMax", "SmoothMaxPool2d"]


def _fmt_beta(beta) -> str:
    if isinstance(beta, torch.Tensor):
        if beta.numel() == 1:
            return f"{beta.item():g}"
        return f"tensor{tuple(beta.shape)}"
    return f"{beta:g}"


class _Temperature(nn.Module):
    """Holds beta: a float, a buffer `beta_buf`, or (learnable) a parameter `log_beta`, so that
    beta = exp(log_beta) > 0 by construction."""

    def _init_beta(self, beta, learnable: bool):
        beta = parse_betas(beta, f"{type(self).__name__}: beta")
        self.learnable = learnable
        if learnable:
            t = beta if isinstance(beta, torch.Tensor) else torch.tensor(beta)
            if not bool(torch.isfinite(t).all()):
                raise ConfigError(
                    f"{type(self).__name__}: a learnable beta must be finite, got {_fmt_beta(t)}"
                )
            t = t if t.dtype is torch.float64 else t.float()  # float64 kept (gradcheck)
            self.log_beta = nn.Parameter(t.log())  # beta = exp(log_beta) > 0
        elif isinstance(beta, torch.Tensor) and beta.requires_grad:
            self.beta_ref = beta  # the caller's tensor (not a buffer): its .grad fills
        elif isinstance(beta, torch.Tensor):
            self.register_buffer("beta_buf", beta)
        else:
            self._beta_float = beta

    @property
    def beta(self):
        """The current beta: a float, or a tensor (learnable or per channel)."""
        if self.learnable:
            return self.log_beta.exp()
        if hasattr(self, "beta_buf"):
            return self.beta_buf
        if "beta_ref" in self.__dict__:
            return self.beta_ref
        return self._beta_float


class SmoothMax(_Temperature):
    """nu_beta(x) = (1/beta) log sum_i exp(beta x_i) over `dim` (docs/math.md (1a)).

    Args:
        beta: inverse temperature in (0, inf]: a number, "inf", or a tensor/list
            broadcastable to the input's shape with `dim` kept as 1. beta = inf is max.
        dim: the dimension (or tuple of dimensions) to reduce.
        learnable: make beta a parameter, stored as its log (`log_beta`), so positive by
            construction; its gradient is d nu / d beta = (sum softmax(beta x) x - nu) / beta.
        keepdim: keep the reduced dims as size 1.
    """

    def __init__(self, beta, dim=-1, learnable: bool = False, keepdim: bool = False):
        super().__init__()
        self._init_beta(beta, learnable)
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smooth_max(x, self.beta, self.dim, self.keepdim)  # (docs/math.md (1a))

    def extra_repr(self) -> str:
        return (f"beta={_fmt_beta(self.beta)}, dim={self.dim}, learnable={self.learnable}, "
                f"keepdim={self.keepdim}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(v, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair (a bool is not an int here: a misplaced positional
    flag); its range is checked as F.max_pool2d checks it."""
    t = (v, v) if _is_int(v) else tuple(v) if isinstance(v, (tuple, list)) else None
    if t is None or len(t) != 2 or not all(_is_int(i) for i in t):
        raise ConfigError(f"SmoothMaxPool2d: {name} must be an int or a pair of ints, got {v!r}")
    return t


def window_counts(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> list[int]:
    """The number of entries of each window along a dim of size n that lie in the input (not in
    the padding, nor past it in ceil_mode's last window): what avg_pool2d's
    count_include_pad=False counts, with dilation."""
    return [sum(0 <= i * s - p + a * d < n for a in range(k))
            for i in range(out_size(n, k, s, p, d, ceil_mode))]


class SmoothMaxPool2d(_Temperature):
    """Smooth-max pooling over (H, W) windows of a (B, C, H, W) input: nu_beta of each window.

    The signature is nn.MaxPool2d's after beta: (beta, kernel_size, stride, padding, dilation,
    return_indices, ceil_mode), and normalized, learnable and ties are keyword-only, so that a
    positional call means what it means for MaxPool2d; a bool where an int is expected, or
    return_indices=True (smooth max has no indices), is refused in one line.

    kernel_size=None pools globally, (B, C, H, W) -> (B, C, 1, 1) like AdaptiveMaxPool2d(1);
    otherwise it gives MaxPool2d's (B, C, H_out, W_out) (dnnlab.smoothmax.windows), the input
    padded with -inf (weight 0 in nu_beta); arguments MaxPool2d refuses raise its RuntimeError
    and message, and so does a configuration torch accepts with a window entirely in the
    padding (a ShapeError naming the arguments: torch's own backward corrupts memory there).
    An unbatched (C, H, W) input gives (C, H_out, W_out). beta = inf is max pooling exactly
    (and so is a beta above the compute dtype's largest finite value); an integer input is
    taken at beta = inf only.

    normalized=True returns nu_beta - log(n)/beta = (1/beta) log((1/n) sum exp(beta x_i)) with
    n the window's entries that lie in the input (padding and ceil_mode's missing entries do
    not count, as avg_pool2d(count_include_pad=False)). It lies in [mean, max] of those
    entries, equals max pooling at beta = inf and tends to average pooling as beta -> 0. It is
    formed as max + (r - log n)/beta with r = log sum exp(beta (x - max)), so nothing large
    cancels, but r's rounding (about eps * log n) is still divided by beta: in float32 expect
    about 1e-4 absolute error at beta = 1e-3; use float64 for smaller beta.

    beta may be a number, "inf", or a per-channel list/tensor of length C; learnable=True makes
    it a parameter stored as its log (`log_beta`); a tensor that requires grad (and
    learnable=False) is used as it is, so its .grad fills (it is not copied into a buffer).

    ties: at beta = inf, "shared" (default) gives the gradient of the limit of softmax(beta x):
    the argmax one-hot with tied maxima sharing it equally (docs/math.md (1c)); "first" is
    torch's max pooling (F.max_pool2d), which routes it to one argmax per window (also on the
    channels whose per-channel beta is inf).
    """

    def __init__(self, beta, kernel_size=None, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False, *,
                 normalized: bool = False, learnable: bool = False, ties: str = "shared"):
        super().__init__()
        if ties not in ("shared", "first"):
            raise ConfigError(f"SmoothMaxPool2d: ties must be 'shared' or 'first', got {ties!r}")
        for key, v in (("return_indices", return_indices), ("ceil_mode", ceil_mode),
                       ("normalized", normalized), ("learnable", learnable)):
            if v is not True and v is not False and v not in (0, 1):
                raise ConfigError(f"SmoothMaxPool2d: {key} must be a bool, got {v!r}")
        if return_indices:
            raise ConfigError("SmoothMaxPool2d: return_indices=True: smooth-max pooling has no "
                              "indices")
        self.ties = ties
        self._init_beta(beta, bool(learnable))
        b = self.beta
        if isinstance(b, torch.Tensor) and b.dim() > 1:
            raise ConfigError(
                f"SmoothMaxPool2d: beta must be a number or one per channel (1-d), got shape "
                f"{tuple(b.shape)}"
            )
        self.kernel_size = None if kernel_size is None else _pair(kernel_size, "kernel_size")
        if stride is not None and kernel_size is None:
            raise ConfigError(
                "SmoothMaxPool2d: stride needs a kernel_size (global pooling has none)")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding, self.dilation = _pair(padding, "padding"), _pair(dilation, "dilation")
        if kernel_size is None and (self.padding != (0, 0) or self.dilation != (1, 1) or ceil_mode):
            raise ConfigError("SmoothMaxPool2d: padding, dilation and ceil_mode need a "
                              "kernel_size (global pooling has none)")
        self.ceil_mode = bool(ceil_mode)
        self.normalized = bool(normalized)
        self._checked = None  # the last (C, H, W, dtype) whose arguments passed the checks
        self._counts = None  # its windows' valid entries per dim, (rows, cols)

    def _channel_beta(self, c: int, trailing: int):
        """beta shaped to broadcast against (B, C, *[1] * trailing) outputs."""
        b = self.beta
        if isinstance(b, torch.Tensor) and b.dim() == 1 and b.numel() > 1:
            if b.numel() != c:
                raise ShapeError(
                    f"SmoothMaxPool2d: {b.numel()} betas for an input with {c} channels")
            return b.view(c, *([1] * trailing))
        return b

    def _plain(self, h: int, w: int) -> bool:
        """MaxPool2d's windows are non-overlapping tiles without padding: the fast paths."""
        ks = self.kernel_size
        return (self.stride == ks and ks[0] > 0 and ks[1] > 0 and self.padding == (0, 0)
                and self.dilation == (1, 1)
                and h >= ks[0] and w >= ks[1]
                and (not self.ceil_mode or (h % ks[0] == 0 and w % ks[1] == 0)))

    def _check(self, x: torch.Tensor) -> None:
        """MaxPool2d's checks of the arguments against x's shape and dtype (torch's own, on a
        meta stand-in), and no window entirely in the padding; once per shape and dtype."""
        key = (x.shape[1:], x.dtype)
        if self._checked == key:
            return
        name = self._name()
        if x.dtype is torch.bool or x.is_complex():  # as torch's max_pool2d refuses them
            raise NotImplementedError(f"{name}: max pooling is not implemented for {x.dtype}")
        ks = self.kernel_size
        if ks is None:
            check_like_max_pool2d(name, x, None, None, None, None, False)
            self._counts = None
        else:
            check_like_max_pool2d(name, x, ks, self.stride, self.padding, self.dilation,
                                  self.ceil_mode)
            counts = tuple(window_counts(n, k, s, p, d, self.ceil_mode) for n, k, s, p, d in
                           zip(x.shape[-2:], ks, self.stride, self.padding, self.dilation))
            if 0 in counts[0] or 0 in counts[1]:
                raise ShapeError(
                    f"{name}: kernel_size={ks}, stride={self.stride}, padding={self.padding}, "
                    f"dilation={self.dilation}, ceil_mode={self.ceil_mode} on a "
                    f"{x.shape[-2]}x{x.shape[-1]} input leave a window entirely in the padding "
                    "(refused: it has no entries, and torch's max_pool2d backward corrupts "
                    "memory there)")
            self._counts = counts
        self._checked = key

    def _name(self) -> str:
        path = getattr(self, "_dnnlab_name", None)  # set by dnnlab.nn.swap_pools
        return f"SmoothMaxPool2d {path}" if path else "SmoothMaxPool2d"

    def _window_counts(self, x: torch.Tensor):
        """For normalized windows that padding or ceil_mode cut: (log n per window (Ho, Wo,
        1, 1), the mask of valid entries (1, 1, Ho, Wo, kh, kw)); None when every window is
        whole (n = kh kw)."""
        rows, cols = self._counts
        kh, kw = self.kernel_size
        if min(rows) == kh and min(cols) == kw:
            return None
        cd = compute_dtype(x.dtype)
        n = torch.tensor(rows, dtype=cd, device=x.device)[:, None] * \
            torch.tensor(cols, dtype=cd, device=x.device)  # (Ho, Wo)
        ones = torch.ones((1, 1, *x.shape[-2:]), dtype=cd, device=x.device)
        valid = windows(ones, self.kernel_size, self.stride, self.padding, self.dilation,
                        self.ceil_mode, pad_value=0.0) > 0  # (1, 1, Ho, Wo, kh, kw)
        return n.log()[:, :, None, None], valid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W), as nn.MaxPool2d takes it
            self._check(x)
            return self.forward(x[None])[0]
        if x.dim() != 4:
            raise ShapeError(
                f"{self._name()}: expected a (B, C, H, W) input, got {tuple(x.shape)}")
        self._check(x)
        ks = self.kernel_size
        h, w = x.shape[2:]
        # torch.func's wrapped tensors take the generic path (torch.compile's tracing never
        # meets them, and must not call this private check: dynamo skips it)
        wrapped = not torch.compiler.is_compiling() and \
            torch._C._functorch.is_functorch_wrapped_tensor(x)
        b = self._scalar_beta(x)  # a float for x's dtype, or None: a tensor beta
        scalar = b is not None
        # one dispatch: torch's max pooling, a kernel of kernels.py, or the generic path
        if scalar and math.isinf(b) and self.ties == "first":
            # torch's max pooling: the gradient goes to one argmax per window
            if ks is None:
                return F.adaptive_max_pool2d(x, 1)  # (B, C, 1, 1)
            return F.max_pool2d(x, ks, self.stride, self.padding, self.dilation,
                                self.ceil_mode)  # (B, C, H_out, W_out)
        if scalar and not wrapped and (ks is None or self._plain(h, w)):
            if math.isinf(b):  # max pooling, ties sharing the gradient: same values, gradients
                return _GlobalMax.apply_to(x) if ks is None else _window_max(x, ks)
            if ks is not None:
                return _apply_window_smooth_max(x, ks, b, self.normalized)[0]
        y = self._smooth(x, b)
        if not scalar and self.ties == "first":
            # channels with beta = inf pool as torch's max pooling (one argmax per window)
            tb = self.beta
            inf = torch.isinf(tb.detach())
            if traced(tb) or bool(inf.any()):
                first = F.adaptive_max_pool2d(x, 1) if ks is None else F.max_pool2d(
                    x, ks, self.stride, self.padding, self.dilation, self.ceil_mode)
                y = torch.where(inf.reshape(-1, 1, 1), first.to(y.dtype), y)  # (C or 1, 1, 1)
        return y

    def _scalar_beta(self, x: torch.Tensor) -> float | None:
        """The fixed scalar beta as x's dtype takes it (in (0, inf]; above the compute dtype's
        largest finite value it is inf), or None for a tensor beta (per channel, learnable).
        An integer input is refused at a finite beta."""
        b = self.__dict__.get("_beta_float")  # set by _Temperature._init_beta for a fixed float
        if b is None:
            b = self.beta
            if isinstance(b, torch.Tensor):
                return None
        floating = x.is_floating_point()
        if b != math.inf:  # inf is inf in every dtype: the common max-pooling case costs nothing
            b = float(_check_scalar_beta(b, compute_dtype(x.dtype) if floating
                                         else torch.float64))
        if not floating and not math.isinf(b):
            raise TypeError(f"{self._name()}: an integer input ({x.dtype}) is pooled at "
                            "beta = inf only; cast it to a floating dtype for a finite beta")
        return b

    def _smooth(self, x: torch.Tensor, scalar_beta):
        """The generic path: smooth_max over each window (a view of x padded with -inf)."""
        c = x.shape[1]
        ks = self.kernel_size
        if ks is None:
            beta = self._channel_beta(c, 2) if scalar_beta is None else scalar_beta
            return smooth_max(x, beta, (-2, -1), True, self.normalized)  # (B, C, 1, 1)
        floating = x.is_floating_point()
        win = windows(x, ks, self.stride, self.padding, self.dilation, self.ceil_mode,
                      pad_value=-math.inf if floating else torch.iinfo(x.dtype).min)
        # (C, 1, 1, 1, 1) or scalar; win (B, C, Ho, Wo, kh, kw)
        beta = self._channel_beta(c, 4) if scalar_beta is None else scalar_beta
        counts = self._window_counts(x) if self.normalized and floating else None
        return smooth_max(win, beta, (-2, -1), False, self.normalized,
                          _counts=counts)  # (B, C, Ho, Wo)

    def extra_repr(self) -> str:
        s = f"beta={_fmt_beta(self.beta)}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.kernel_size is not None and (self.padding != (0, 0) or self.dilation != (1, 1)
                                             or self.ceil_mode):
            s += f", padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        s += f", normalized={self.normalized}, learnable={self.learnable}"
        return s + (", ties='first'" if self.ties == "first" else "")
