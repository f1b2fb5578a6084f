"""dnnlab.opcount.counter: closed-form counts (docs/math.md (2)) against the counter, brute force
and fvcore; the model left as it was; a bad input names the layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dnnlab.core.errors import ShapeError
from dnnlab.opcount import count_ops
from dnnlab.opcount.reconcile import fvcore_counts, reconcile

# (path, C_in, k, C_out, H_out): AlexNet's convs at 224x224
ALEXNET_CONVS = [("features.0", 3, 11, 64, 55), ("features.3", 64, 5, 192, 27),
                 ("features.6", 192, 3, 384, 13), ("features.8", 384, 3, 256, 13),
                 ("features.10", 256, 3, 256, 13)]
ALEXNET_LINEARS = [("classifier.1", 9216, 4096), ("classifier.4", 4096, 4096),
                   ("classifier.6", 4096, 1000)]


def test_alexnet_numbers_of_docs_math_2_exact_per_layer():
    report = count_ops(torchvision.models.alexnet(), [1, 3, 224, 224])
    convs = [r for r in report.layers if r.family == "conv"]
    lins = [r for r in report.layers if r.family == "linear"]
    for row, (path, cin, k, cout, h) in zip(convs, ALEXNET_CONVS, strict=True):
        expect = cin * k * k * cout * h * h  # docs/math.md (2): C_in k^2 each, C_out H W outputs
        assert (row.path, row.mults, row.adds, row.macs) == (path, expect, expect, expect)
    for row, (path, n_in, n_out) in zip(lins, ALEXNET_LINEARS, strict=True):
        assert (row.path, row.mults, row.adds) == (path, n_in * n_out, n_in * n_out)
    totals = report.totals()
    assert totals["conv"] == 655_566_528  # docs/math.md (2)
    assert totals["linear"] == 58_621_952


def test_adds_without_bias_count():
    conv = nn.Conv2d(3, 4, 3, bias=False)
    row = count_ops(conv, [2, 3, 8, 8]).layers[0]
    outputs = 2 * 4 * 6 * 6
    assert row.mults == outputs * 27 and row.adds == row.mults - outputs
    row = count_ops(conv, [2, 3, 8, 8], count_bias=False).layers[0]
    assert row.bias_adds == 0
    lin = nn.Linear(5, 7)
    with_bias = count_ops(lin, [3, 5]).layers[0]
    no_bias = count_ops(lin, [3, 5], count_bias=False).layers[0]
    assert with_bias.adds == with_bias.mults == 3 * 5 * 7
    assert no_bias.adds == 3 * 4 * 7  # (in - 1) adds per output


def _brute_force_macs(layer: nn.Module, shape) -> int:
    """Count products by computing: all-ones weights on an all-ones input padded with ones,
    so every output sums exactly its products; the sum over outputs is the total."""
    with torch.no_grad():
        w = torch.ones_like(layer.weight, dtype=torch.float64)
        x = torch.ones(shape, dtype=torch.float64)
        d = w.dim() - 2
        if isinstance(layer, nn.modules.conv._ConvTransposeNd):
            f = getattr(F, f"conv_transpose{d}d")
            y = f(x, w, None, layer.stride, 0, 0, layer.groups, layer.dilation)
            return int(y.sum().item())
        pad = layer.padding
        if isinstance(pad, str):
            eff = [layer.dilation[i] * (layer.kernel_size[i] - 1) for i in range(d)]
            pad = [e // 2 for e in eff] if pad == "same" else [0] * d
            extra = [e - 2 * (e // 2) for e in eff] if layer.padding == "same" else [0] * d
        else:
            extra = [0] * d
        widths = []
        for i in reversed(range(d)):
            widths += [pad[i], pad[i] + extra[i]]
        x = F.pad(x, widths, value=1.0)
        f = getattr(F, f"conv{d}d")
        y = f(x, w, None, layer.stride, 0, layer.dilation, layer.groups)
        return int(y.sum().item())


TINY = [
    (nn.Conv1d(4, 6, 3), [2, 4, 11]),
    (nn.Conv1d(4, 8, 5, stride=2, padding=2, dilation=2, groups=2), [1, 4, 17]),
    (nn.Conv2d(3, 6, 3, stride=2, padding=1), [2, 3, 9, 9]),
    (nn.Conv2d(4, 8, 3, dilation=2, padding="same", groups=4), [1, 4, 10, 10]),
    (nn.Conv2d(6, 6, 3, groups=6, bias=False), [1, 6, 7, 7]),
    (nn.Conv2d(4, 4, (3, 5), stride=(1, 2), padding=(1, 0)), [1, 4, 8, 12]),
    (nn.Conv3d(2, 4, 3, stride=2, padding=1), [1, 2, 6, 6, 6]),
    (nn.Conv2d(2, 4, 3, padding="valid"), [1, 2, 6, 6]),
    (nn.ConvTranspose1d(4, 2, 3, stride=2), [1, 4, 5]),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), [2, 4, 5, 5]),
    (nn.ConvTranspose2d(3, 3, 4, stride=3, dilation=2), [1, 3, 4, 4]),
    (nn.ConvTranspose3d(2, 2, 2, stride=2), [1, 2, 3, 3, 3]),
]


@pytest.mark.parametrize("layer,shape", TINY, ids=lambda v: str(v) if isinstance(v, list) else
                         repr(v).replace(" ", ""))
def test_tiny_convs_against_fvcore_and_brute_force(layer, shape):
    report = count_ops(layer, shape)
    (row,) = [r for r in report.layers if r.family == "conv"]
    assert row.out_shape == list(layer(torch.zeros(shape)).shape)
    fv = fvcore_counts(layer, shape)[""].get("conv", 0)
    if isinstance(getattr(layer, "padding", 0), str):  # fvcore skips aten::_convolution_mode
        assert fv == 0 and reconcile(layer, shape, backward=False).reconciled
    else:
        assert row.macs == fv
    assert row.macs == _brute_force_macs(layer, shape)


def test_linear_of_any_rank_and_inside_attention_against_fvcore():
    lin = nn.Linear(6, 5)
    assert count_ops(lin, [2, 3, 4, 6]).totals()["linear"] == 2 * 3 * 4 * 6 * 5
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    rec = reconcile(layer, [2, 7, 16], backward=True)
    assert rec.reconciled
    # in_proj (16 -> 48) and out_proj (16 -> 16) inside MultiheadAttention, linear1, linear2
    expected = 2 * 7 * (16 * 48 + 16 * 16 + 16 * 32 + 32 * 16)
    assert rec.totals["linear"] == {"analytic": expected, "fvcore": expected}
    # SDPA: q k^T and attn v per head: B H L S (E + Ev); fvcore skips it
    assert rec.totals["attention"]["analytic"] == 2 * 4 * 7 * 7 * (4 + 4)
    assert rec.totals["attention"]["fvcore"] == 0
    assert rec.flop_counter["match"], rec.flop_counter


def test_bad_input_names_the_layer():
    with pytest.raises(ShapeError) as err:
        count_ops(torchvision.models.alexnet(), [1, 3, 32, 32])
    msg = str(err.value)
    assert "features.12" in msg and "MaxPool2d" in msg and "[1, 256, 1, 1]" in msg
    assert "\n" not in msg
    with pytest.raises(ShapeError, match=r"layer 'features.0' \(Conv2d\): input has 1 channels"):
        count_ops(torchvision.models.alexnet(), [1, 1, 224, 224])
    with pytest.raises(ShapeError, match=r"'0' \(Conv2d\).*kernel 5"):
        count_ops(nn.Sequential(nn.Conv2d(1, 2, 5)), [1, 1, 3, 3])


def test_model_left_as_it_was_and_meta_cost_independent_of_batch():
    model = torchvision.models.resnet18()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = (dict(torch.nn.modules.module._global_forward_hooks),
             dict(torch.nn.modules.module._global_forward_pre_hooks))
    small = count_ops(model, [1, 3, 224, 224])
    huge = count_ops(model, [4096, 3, 224, 224])  # 2.4 GB if it were real: meta allocates none
    assert huge.totals()["conv"] == 4096 * small.totals()["conv"]
    assert model.training and all(m.training for m in model.modules())
    assert (dict(torch.nn.modules.module._global_forward_hooks),
            dict(torch.nn.modules.module._global_forward_pre_hooks)) == hooks
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].device.type == "cpu" for k in before)


def test_dnnlab_layers_are_counted():
    from dnnlab.functional import smooth_max
    from dnnlab.nn import SmoothMaxPool2d, swap_convs
    from dnnlab.train.model import SmoothMaxCNN

    native = torchvision.models.resnet18()
    ours = swap_convs(torchvision.models.resnet18())
    a, b = count_ops(native, [2, 3, 64, 64]), count_ops(ours, [2, 3, 64, 64])
    assert a.totals() == b.totals() and a.totals(backward=True) == b.totals(backward=True)
    assert [r.path for r in a.layers] == [r.path for r in b.layers]
    # smooth max: a family of its own; each output reduces its window (docs/math.md (1a))
    rows = [r for r in count_ops(SmoothMaxPool2d(2.0, kernel_size=2), [1, 3, 8, 8]).layers]
    assert [(r.family, r.out_shape) for r in rows] == [("smooth_max", [1, 3, 4, 4])]
    n, m = 3 * 8 * 8, 3 * 4 * 4  # entries, outputs
    assert (rows[0].mults, rows[0].adds, rows[0].other) == (n + m, 2 * n, 2 * n + m)

    class F(nn.Module):
        """dnnlab.functional.smooth_max over the last dim."""

        def forward(self, x):
            return smooth_max(x, 2.0, dim=-1)

    (row,) = count_ops(F(), [3, 5]).layers
    assert row.family == "smooth_max" and row.mults == 15 + 3
    totals = count_ops(SmoothMaxCNN(1, 10, (4, 8, 8)), [1, 1, 8, 8]).totals()
    assert totals["smooth_max"] > 0 and totals["conv"] == 64 * (4 * 9 + 8 * 4 * 9) + 16 * 8 * 8 * 9
