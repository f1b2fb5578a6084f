"""Smooth max, nu_beta(x) = (1/beta) log sum_i exp(beta x_i) (docs/math.md (1a)-(1c)): the
function with its own backward, the layers, the plain-autograd reference, and the experiment
that measures its limits in beta (docs/smoothmax.md)."""
from dnnlab.smoothmax.functional import smooth_max
from dnnlab.smoothmax.limits import LimitsResult, LimitsSettings, run
from dnnlab.smoothmax.modules import SmoothMax, SmoothMaxPool2d
from dnnlab.smoothmax.reference import smooth_max_reference

__all__ = ["LimitsResult", "LimitsSettings", "SmoothMax", "SmoothMaxPool2d", "run",
           "smooth_max", "smooth_max_reference"]
