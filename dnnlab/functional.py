"""Kept for `from dnnlab.functional import smooth_max`; the code is dnnlab.smoothmax.functional."""
from dnnlab.smoothmax.functional import smooth_max  # noqa: F401
