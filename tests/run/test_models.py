"""Building networks from specs: layer lists, `_target_` specs, meta-device builds, errors."""
from __future__ import annotations

import math

import pytest
import torch

from dnnlab.core.errors import ConfigError
from dnnlab.opcount.build import materialize
from dnnlab.run.models import build_layers, build_model, instantiate_spec


def test_build_layers_resolves_torch_and_dnnlab_names():
    net = build_layers([{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3},
                        {"type": "dnnlab.nn.Conv1d", "in_channels": 1, "out_channels": 1,
                         "kernel_size": 2}, {"type": "SmoothMax", "beta": 2.0}])
    assert type(net[0]) is torch.nn.Conv2d and type(net[1]).__module__ == "dnnlab.conv.modules"
    assert type(net[2]).__name__ == "SmoothMax"


@pytest.mark.parametrize("layers, needle", [
    ("Conv2d", ": expected a list of layers"),
    ([{"in_channels": 1}], r"\[0\]: missing key 'type'"),
    ([{"type": "Nope"}], r"\[0\]\.type: unknown layer type 'Nope'"),
    ([{"type": "no.such.Mod"}], r"\[0\]\.type: cannot import 'no.such.Mod'"),
    ([{"type": "Linear", "in_features": 2}], r"\[0\] \(Linear\)"),
    ([3], r"\[0\]=3: expected"),
])
def test_build_layers_errors_name_the_entry(layers, needle):
    with pytest.raises(ConfigError, match=r"model\.builder\.layers" + needle):
        build_layers(layers)


def test_instantiate_spec_plain_partial_and_errors():
    lin = instantiate_spec({"_target_": "torch.nn.Linear", "in_features": 2}, "m", out_features=3)
    assert lin.weight.shape == (3, 2)
    opt = instantiate_spec({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                           "optimizer", params=lin.parameters())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(ConfigError, match=r"^optimizer \(torch\.optim\.SGD\): .*nope"):
        instantiate_spec({"_target_": "torch.optim.SGD", "_partial_": True, "nope": 1},
                         "optimizer", params=lin.parameters())
    with pytest.raises(ConfigError, match=r"^data\.dataset="):
        instantiate_spec({"name": "x"}, "data.dataset")
    with pytest.raises(ConfigError, match=r"model\.pool\.beta=-1"):  # the target's own error
        instantiate_spec({"_target_": "dnnlab.train.model.SmoothMaxCNN", "beta": -1},
                         "model.builder")


def test_build_model_on_meta_and_materialize():
    spec = {"_target_": "dnnlab.train.model.SmoothMaxCNN", "channels": [4, 4, 4], "beta": 2.0}
    net = build_model(spec, device="meta", beta=math.inf)
    assert all(p.is_meta for p in net.parameters())
    assert net.features[4].beta == math.inf  # the override won
    real = materialize(net)
    assert not any(p.is_meta for p in real.parameters())
    assert float(real.head.weight.detach().abs().sum()) == 0.0
    out = real(torch.randn(2, 1, 8, 8))  # (B, num_classes)
    assert out.shape == (2, 10)
