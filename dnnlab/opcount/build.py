"""Building a model for counting: on the meta device when its builder allows it, and the
default input shape of a torchvision classifier."""
from __future__ import annotations

from collections.abc import Callable

import torch


def build_meta(builder: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a model without allocating weights when possible.

    Most builders work under `torch.device("meta")`; some (torchvision's regnets) do not, and
    are built on the CPU instead. Either way `count_ops` only looks at shapes.
    """
    try:
        with torch.device("meta"):
            return builder()
    except Exception:  # noqa: BLE001 - e.g. regnets call .item() while building
        return builder()


def torchvision_input_shape(name: str, model: torch.nn.Module | None = None) -> list:
    """Default input shape (1, 3, H, W) of a torchvision classifier.

    The crop size of its default weights' transforms (299 for inception_v3, 600 for
    efficientnet_b7, ...), read from the weights' metadata (nothing is downloaded); a ViT built
    without weights takes its own `image_size` (224 for vit_h_14, whose SWAG weights use 518).
    """
    import torchvision

    if model is not None and hasattr(model, "image_size"):
        size = int(model.image_size)
    else:
        try:
            w = torchvision.models.get_model_weights(name).DEFAULT
            size = int(w.transforms().crop_size[0])
        except (ValueError, AttributeError, IndexError, TypeError):
            size = 224
    return [1, 3, size, size]


def materialize(model: torch.nn.Module) -> torch.nn.Module:
    """A model built on meta, given zero CPU weights (for fvcore, which needs real tensors)."""
    if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.zero_()
                else:
                    t.fill_(1)
    return model
