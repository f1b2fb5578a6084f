"""dnnlab.opcount.experiment: the settings' checks and `run` on small networks, with the counts
checked against the closed forms of docs/math.md (2) and against fvcore."""
from __future__ import annotations

import pytest
from torch import nn

from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.opcount import build_meta
from dnnlab.opcount.experiment import CountSettings, OpcountSettings, run
from dnnlab.run.config import settings_of

KEYS = {"model", "input_shape", "unit", "inputs", "mode", "mode_reason", "not_counted",
        "fvcore_error", "failed_checks", "count_bias", "layers", "totals", "backward_totals",
        "reconciled", "flop_counter", "mismatches", "params", "buffers",
        "skipped_checks", "causal_totals"}
LENET = {"name": "tiny", "input_shape": [2, 1, 8, 8], "builder": {
    "_target_": "dnnlab.run.models.build_layers", "layers": [
        {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3},
        {"type": "ReLU"}, {"type": "Flatten"},
        {"type": "Linear", "in_features": 144, "out_features": 10}]}}


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


def test_settings_take_the_model_input_shape_and_check_values():
    s = OpcountSettings(model=LENET)
    assert s.input_shape == [2, 1, 8, 8] and s.name == "tiny" and s.count.backward
    assert OpcountSettings(model=LENET, input_shape=[1, 1, 9, 9]).input_shape == [1, 1, 9, 9]
    for kwargs, key in [({"model": {}}, "model"), ({"input_shape": [0, 1, 8, 8]}, "input_shape"),
                        ({"input_shape": []}, "input_shape"),
                        ({"show_rows": -1}, "show_rows")]:
        with pytest.raises(ConfigError) as err:
            OpcountSettings(**{"model": LENET, **kwargs})
        assert err.value.key == key and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^opcount.count.backward"):
        settings_of(OpcountSettings, {"model": LENET, "count": {"backward": "maybe"}},
                    "opcount")
    s = settings_of(OpcountSettings, {"model": LENET, "count": {"bias": False}}, "opcount")
    assert isinstance(s.count, CountSettings) and s.count.bias is False


def test_run_counts_and_reconciles_a_small_network():
    result = run(tiny(), [2, 1, 8, 8], name="tiny")
    d = result.to_dict()
    assert set(d) == KEYS and d["model"] == "tiny" and d["input_shape"] == [2, 1, 8, 8]
    assert d["params"]["total"] == 4 * 9 + 4 + 144 * 10 + 10 and d["buffers"]["total"] == 0
    conv = 2 * 4 * 6 * 6 * (1 * 3 * 3)  # docs/math.md (2): outputs x C_in k^2
    linear = 2 * 144 * 10
    assert d["totals"]["conv"] == {"analytic": conv, "fvcore": conv}
    assert d["totals"]["linear"] == {"analytic": linear, "fvcore": linear}
    assert d["reconciled"] is True and d["flop_counter"]["match"] is True
    # backward: weight gradient only for the first conv (the input needs none), both for linear
    assert d["backward_totals"]["conv"] == conv and d["backward_totals"]["linear"] == 2 * linear
    first = d["layers"][0]
    assert (first["path"], first["type"], first["op"], first["match"]) == ("0", "Conv2d",
                                                                            "conv2d", True)
    assert {m["family"] for m in d["mismatches"]} <= {"elementwise", "bias"}
    assert result.mismatches(strict=True) == []
    s = result.summary()
    assert s["macs/conv"] == conv and s["fvcore/linear"] == linear and s["reconciled"] is True
    layers, totals = result.tables()
    assert layers.key == "layers" and len(layers.rows) == len(d["layers"])
    assert totals.rows[0] == ["conv", conv, conv, True]
    per_layer = result.per_layer_table()
    assert [r[0] for r in per_layer.rows] == ["0", "3"]
    assert f"{conv:,}" in per_layer.to_markdown()
    assert "match" in result.flop_counter_line()


def test_run_without_reconcile_or_backward_on_a_meta_model():
    model = build_meta(tiny)
    assert next(model.parameters()).is_meta
    result = run(model, [1, 1, 8, 8], count=CountSettings(backward=False, bias=False),
                 reconcile_counts=False)
    d = result.to_dict()
    assert d["reconciled"] is None and d["flop_counter"] is None and d["mismatches"] == []
    assert d["backward_totals"] is None and d["count_bias"] is False
    assert d["totals"]["conv"] == {"analytic": 4 * 36 * 9, "fvcore": None}
    assert d["layers"][0]["adds"] == 4 * 36 * 8  # without the bias add: C_in k^2 - 1 each
    assert result.flop_counter_line() == "" and "fvcore/conv" not in result.summary()
    assert next(model.parameters()).is_meta  # not materialized when not reconciling


def test_run_names_the_layer_of_a_bad_input():
    with pytest.raises(ShapeError, match=r"layer '3' \(Linear\): input has 64 features"):
        run(tiny(), [1, 1, 6, 6], reconcile_counts=False)


def test_training_mode_is_passed_on():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout()).eval()
    result = run(model, [1, 1, 5, 5], training=True, reconcile_counts=False)
    assert result.report.training is True
    assert not any(m.training for m in model.modules())  # its mode is restored


def test_run_with_input_grad_counts_the_first_layers_input_gradient():
    macs = 2 * 4 * 6 * 6 * 9
    for grad, first in ((False, macs), (True, 2 * macs)):
        d = run(tiny(), [2, 1, 8, 8], count=CountSettings(input_grad=grad),
                reconcile_counts=True).to_dict()
        assert d["layers"][0]["bwd_macs"] == first and d["backward_totals"]["conv"] == first
        assert d["input_shape"] == [2, 1, 8, 8] and d["reconciled"] is True
        assert d["flop_counter"]["backward_match"] is True
