"""dnnlab's layers: smooth-max (log-sum-exp with a temperature) and convolutions with
hand-written backprop (seed problems 1 and 4)."""
from dnnlab.nn.conv import Conv1d, Conv2d, Conv3d, swap_convs
from dnnlab.nn.smooth_max import SmoothMax, SmoothMaxPool2d

__all__ = ["Conv1d", "Conv2d", "Conv3d", "SmoothMax", "SmoothMaxPool2d", "swap_convs"]
