"""dnnlab's layers: smooth max (log-sum-exp with a temperature) and convolutions with
hand-written backprop (docs/math.md (1a)-(1c) and (3a)-(3b)).

The layers live with their topics (`dnnlab.smoothmax`, `dnnlab.conv`); this package gathers
them under one name, like `torch.nn`.
"""
from dnnlab.conv.modules import Conv1d, Conv2d, Conv3d, swap_convs
from dnnlab.smoothmax.modules import SmoothMax, SmoothMaxPool2d
from dnnlab.smoothmax.swap import SmoothAdaptiveMaxPool2d, swap_pools

__all__ = ["Conv1d", "Conv2d", "Conv3d", "SmoothAdaptiveMaxPool2d", "SmoothMax", "SmoothMaxPool2d",
           "swap_convs", "swap_pools"]
