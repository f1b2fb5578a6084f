"""Convolution backprop (docs/math.md (3)-(3b)): the Toeplitz form A_w of a 1-D convolution, our
Conv1d/2d/3d with a hand-written backward, the chain (a 1-D conv network) and its gradients by
four methods, their checks and their cost.

    toeplitz    A_w of a filter (3)
    function    ConvNdFunction: conv forward, transposed conv / correlation backward (4a, 4b)
    modules     Conv1d, Conv2d, Conv3d (torch's classes, our backward), swap_convs
    chain       ChainSpec, the chain's gradients by matrix, conv, autograd and dnnlab's Conv1d
    verify      every pair of methods compared, gradcheck, real networks swapped vs native
    scaling     matrix vs conv form, time and memory as n grows
    experiment  ConvSettings (conf/conv.yaml) and run() -> ConvResult
    plots, report
"""
from dnnlab.conv.modules import Conv1d, Conv2d, Conv3d, swap_convs
from dnnlab.conv.toeplitz import toeplitz

__all__ = ["Conv1d", "Conv2d", "Conv3d", "swap_convs", "toeplitz"]
