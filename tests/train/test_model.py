"""dnnlab.train.model: SmoothMaxCNN checks its arguments (naming the key) and counts like a fixed
beta when its beta is learnable."""
from __future__ import annotations

import pytest

from dnnlab.core.errors import ConfigError
from dnnlab.opcount import count_ops
from dnnlab.train.model import SmoothMaxCNN


def test_smoothmax_cnn_checks_its_arguments():
    with pytest.raises(ConfigError, match="channels"):
        SmoothMaxCNN(channels=[1, 2])
    with pytest.raises(ConfigError, match=r"model\.pool\.beta='abc'"):
        SmoothMaxCNN(beta="abc")


def test_a_learnable_beta_counts_on_meta_and_bad_ties_name_the_key():
    net = SmoothMaxCNN(channels=[4, 4, 4], learnable=True)
    fixed = SmoothMaxCNN(channels=[4, 4, 4], learnable=False)
    a, b = count_ops(net, [1, 1, 8, 8]), count_ops(fixed, [1, 1, 8, 8])
    assert a.mode == "meta", a.mode_reason  # counted on meta, like a fixed beta
    assert a.totals() == b.totals() and a.totals()["smooth_max"] > 0
    assert net.features[4].log_beta.requires_grad  # the model is as it was
    with pytest.raises(ConfigError, match=r"^model\.pool\.ties='nope'"):
        SmoothMaxCNN(ties="nope")
