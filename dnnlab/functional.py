"""dnnlab's functions, gathered under one name as torch.nn.functional: `smooth_max`
(dnnlab.smoothmax.functional, docs/math.md (1a)-(1c))."""
from dnnlab.smoothmax.functional import smooth_max  # noqa: F401
