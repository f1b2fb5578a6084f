"""The windows of nn.MaxPool2d (kernel_size, stride, padding, dilation, ceil_mode) as a view,
for smooth-max pooling: padded with -inf, which gets weight exp(-inf) = 0 in nu_beta
(docs/math.md (1a)), so a padded entry never changes a window's value or gradient.

Output size per spatial dim, as torch's max pooling (pooling_output_shape):

    out = floor_or_ceil((n + 2p - d(k - 1) - 1) / s) + 1,
    and with ceil_mode the last window must start inside the input or the left padding.
"""
import math

import torch
import torch.nn.functional as F

__all__ = ["check_like_max_pool2d", "out_size", "windows"]


def out_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """The number of windows along a dim of size n (torch's pooling_output_shape)."""
    span = n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = span // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def check_like_max_pool2d(owner: str, x: torch.Tensor, kernel, stride, padding, dilation,
                          ceil_mode: bool) -> None:
    """Raise what F.max_pool2d (kernel None: F.adaptive_max_pool2d(x, 1)) raises for these
    arguments and x's shape and dtype (same type, torch's message after `owner: `): its own
    checks run on a CPU stand-in of zeros of x's dtype and (H, W), with at most one channel
    and one sample (zero where x has none)."""
    shape = [min(n, 1) for n in x.shape[:-2]] + list(x.shape[-2:])
    stand_in = torch.zeros(shape, dtype=x.dtype)
    try:
        if kernel is None:
            F.adaptive_max_pool2d(stand_in, 1)
        else:
            F.max_pool2d(stand_in, kernel, stride, padding, dilation, ceil_mode)
    except (RuntimeError, NotImplementedError) as e:
        first = str(e).splitlines()[0]
        if x.dim() >= 3 and x.shape[-3] > 1:
            first = first.replace("(1x", f"({x.shape[-3]}x")  # C, not 1
        raise type(e)(f"{owner}: {first}") from None


def windows(x: torch.Tensor, kernel, stride, padding, dilation, ceil_mode: bool,
            pad_value: float = -math.inf):
    """(B, C, H, W) -> (B, C, H_out, W_out, kh, kw), a view of x padded with -inf (or
    `pad_value`: an integer input's smallest value, a mask's 0): window
    (i, j) holds x[h, w] at h = i*sh - ph + a*dh, w = j*sw - pw + b*dw (a < kh, b < kw)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    h, w = x.shape[-2:]
    ho = out_size(h, kh, sh, ph, dh, ceil_mode)
    wo = out_size(w, kw, sw, pw, dw, ceil_mode)
    spans = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)  # the dilated kernel
    # right/bottom padding: ph, or more so that ceil_mode's last window fits
    pb = max(ph, (ho - 1) * sh + spans[0] - h - ph)
    pr = max(pw, (wo - 1) * sw + spans[1] - w - pw)
    if ph or pw or pb or pr:
        x = F.pad(x, (pw, pr, ph, pb), value=pad_value)  # (B, C, H + ph + pb, W + pw + pr)
    win = x.unfold(2, spans[0], sh)[:, :, :ho, :, ::dh]  # (B, C, Ho, W', kh)
    return win.unfold(3, spans[1], sw)[:, :, :, :wo, :, ::dw]  # (B, C, Ho, Wo, kh, kw)
