"""How dnnlab's autograd Functions behave under torch.autocast (trainer.precision).

The Functions are written in torch.func's setup_context style (forward without ctx), which
torch.amp.custom_fwd / custom_bwd cannot wrap; `applier(Fn, cast_inputs)` gives the function
the call sites use instead:

    _apply_smooth_max = amp.applier(_SmoothMax, torch.float32)   # log-sum-exp in float32

With `cast_inputs` and autocast on for the inputs' device, floating inputs are cast and the
Function runs with autocast off (its backward in that dtype too); `cast_inputs=None` runs it in
the ambient autocast state (the convolutions: lower precision where torch's own conv would be).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd import forward_ad
from torch.autograd.function import _SingleLevelFunction

DEVICES = ("cpu", "cuda")


def _device_of(args) -> str:
    return next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")


def applier(fn, cast_inputs: torch.dtype | None = None) -> Callable:
    """A function calling fn.apply(*args) for an autograd.Function written in the setup_context
    style (the one torch.func's transforms take), whose forward has no ctx for custom_fwd to use.

    With `cast_inputs` and autocast on for the inputs' device, the floating tensor arguments are
    cast to that dtype and the Function runs with autocast off there (as
    custom_fwd(cast_inputs=...) did); its backward then sees that dtype too. Otherwise
    fn.apply(*args) as it is. Under torch.compile's tracing it applies a twin of fn without its
    custom jvp (dynamo does not trace one: a graph break), the same forward, setup_context,
    backward and vmap rule."""
    twin = type(fn.__name__, (fn,), {"jvp": staticmethod(torch.autograd.Function.jvp),
                                     "__module__": fn.__module__,
                                     "__qualname__": fn.__qualname__})
    plain = _ctx_style(fn)

    def call(*args):
        if torch.compiler.is_compiling():
            f = twin
        elif torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
            f = fn
        else:
            f = plain
        if cast_inputs is not None:
            device = _device_of(args)
            if device in DEVICES and torch.is_autocast_enabled(device):  # not meta
                args = tuple(a.to(cast_inputs) if isinstance(a, torch.Tensor)
                             and a.is_floating_point() and a.dtype is not cast_inputs else a
                             for a in args)
                with torch.autocast(device, enabled=False):
                    return f.apply(*args)
        return f.apply(*args)
    return call


def _ctx_style(fn):
    """fn in the ctx style (forward(ctx, *args) running fn's forward, then its setup_context):
    the same values, saved tensors and backward, for plain tensors with no torch.func transform
    and no forward-mode level active. Its apply costs tens of microseconds less: torch binds
    the arguments of a setup_context-style Function through inspect.signature on every call
    (torch.autograd.function._bind_default_args), which the ctx style skips; at the small
    sizes of the digits network that is a few percent of a training step (benchmarks/train.py)."""
    forward, setup = fn.forward, fn.setup_context

    def ctx_forward(ctx, *args):
        out = forward(*args)
        setup(ctx, args, out)
        return out

    return type(fn.__name__, (fn,), {
        "forward": staticmethod(ctx_forward),
        "setup_context": _SingleLevelFunction.__dict__["setup_context"],  # "not defined"
        "__module__": fn.__module__, "__qualname__": fn.__qualname__})
