"""dnnlab.opcount.build: default input shapes of torchvision classifiers; building on meta."""
from __future__ import annotations

import math

import torch
import torchvision

from dnnlab.opcount import torchvision_input_shape


def test_default_input_shapes():
    assert torchvision_input_shape("inception_v3") == [1, 3, 299, 299]
    assert torchvision_input_shape("efficientnet_b7") == [1, 3, 600, 600]
    with torch.device("meta"):
        vit = torchvision.models.vit_h_14()  # built without weights: image_size 224
    assert torchvision_input_shape("vit_h_14", vit) == [1, 3, 224, 224]
    assert torchvision_input_shape("vit_h_14") == [1, 3, 518, 518]  # its SWAG weights' crop
    assert math.prod(torchvision_input_shape("alexnet")) == 3 * 224 * 224


