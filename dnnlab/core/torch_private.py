"""The private torch APIs dnnlab uses, in one place (each has no public equivalent)."""
from __future__ import annotations


def graphs_compiled() -> int:
    """The number of graphs torch.compile (dynamo) has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
