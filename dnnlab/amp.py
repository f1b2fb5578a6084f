"""How dnnlab's autograd Functions behave under torch.autocast (trainer.precision), declared with
torch.amp.custom_fwd / custom_bwd for whichever device the inputs are on (torch's decorators
take one device type; these pick CPU or CUDA at call time):

    class _SmoothMax(torch.autograd.Function):
        @staticmethod
        @custom_fwd(cast_inputs=torch.float32)   # log-sum-exp in float32: (1a) kept in bf16
        def forward(ctx, x, ...): ...

        @staticmethod
        @custom_bwd
        def backward(ctx, g): ...

`cast_inputs=None` runs the forward in the ambient autocast state (the convolutions: lower
precision where torch's own conv would be), and the backward in the same state.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

DEVICES = ("cpu", "cuda")


def _device_of(args) -> str:
    return next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")


def custom_fwd(fwd: Callable | None = None, *, cast_inputs: torch.dtype | None = None):
    """torch.amp.custom_fwd for the device of the first tensor argument."""
    if fwd is None:
        return functools.partial(custom_fwd, cast_inputs=cast_inputs)
    per_device = {d: torch.amp.custom_fwd(fwd, device_type=d, cast_inputs=cast_inputs)
                  for d in DEVICES}

    @functools.wraps(fwd)
    def forward(ctx, *args, **kwargs):
        device = _device_of(args)
        ctx._dnnlab_amp_device = device
        return per_device.get(device, fwd)(ctx, *args, **kwargs)
    return forward


def custom_bwd(bwd: Callable) -> Callable:
    """torch.amp.custom_bwd for the device its forward ran on."""
    per_device = {d: torch.amp.custom_bwd(bwd, device_type=d) for d in DEVICES}

    @functools.wraps(bwd)
    def backward(ctx, *grads):
        return per_device.get(getattr(ctx, "_dnnlab_amp_device", None), bwd)(ctx, *grads)
    return backward



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

    def call(*args):
        f = twin if torch.compiler.is_compiling() else fn
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
