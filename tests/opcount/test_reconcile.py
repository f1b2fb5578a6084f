"""dnnlab.opcount.reconcile: dnnlab's counts equal fvcore's (conv, linear, matmul) and, for a
training step, torch's FlopCounterMode's; on real torchvision classifiers."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dnnlab.opcount import count_ops, reconcile, torchvision_input_shape


def test_matmul_bmm_einsum_against_fvcore():
    class Products(nn.Module):
        """A matmul, a bmm and an einsum."""

        def forward(self, x):  # (B, N, D)
            a = x @ x.transpose(1, 2)  # (B, N, N): B N N D
            b = torch.bmm(a, x)  # (B, N, D): B N N D
            return torch.einsum("bnd,bmd->bnm", b, x)  # B N M D

    rec = reconcile(Products(), [2, 5, 3], backward=False)
    assert rec.totals["matmul"]["analytic"] == 3 * 2 * 5 * 5 * 3
    assert rec.totals["matmul"]["analytic"] == rec.totals["matmul"]["fvcore"]


def test_backward_counts_against_flop_counter_mode():
    for name in ("resnet18", "mobilenet_v3_small"):  # the second has depthwise (grouped) convs
        rec = reconcile(torchvision.models.get_model(name), [2, 3, 64, 64])
        fc = rec.flop_counter
        assert fc["match"] and fc["backward_match"], fc
        assert fc["forward_flops_torch"] == fc["forward_flops_analytic"]
    # first conv: no input gradient (the data does not require grad), weight gradient only
    report = count_ops(torchvision.models.alexnet(), [1, 3, 224, 224])
    first, second = report.layers[0], report.layers[3]
    assert first.bwd_macs == first.macs and second.bwd_macs == 2 * second.macs


CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)
FAST = ["alexnet", "vit_b_16", "regnet_y_400mf", "googlenet", "squeezenet1_1"]


def _check_classifier(name: str, backward: bool) -> None:
    from dnnlab.models import materialize
    from dnnlab.opcount import build_meta

    model = build_meta(lambda: torchvision.models.get_model(name))
    shape = torchvision_input_shape(name, model)
    report = count_ops(model, shape)
    weights = torchvision.models.get_model_weights(name)
    assert report.params["total"] == next(iter(weights)).meta["num_params"], name
    model = materialize(model)
    rec = reconcile(model, shape, report=report, backward=backward)
    bad = [r for r in rec.rows if r.family in ("conv", "linear") and not r.match]
    assert rec.reconciled and not bad, (name, bad[:3], rec.totals)
    assert rec.totals["conv"]["analytic"] == rec.totals["conv"]["fvcore"]
    assert rec.totals["linear"]["analytic"] == rec.totals["linear"]["fvcore"]
    if backward:
        assert rec.flop_counter["match"] and rec.flop_counter["backward_match"], (
            name, rec.flop_counter)


@pytest.mark.parametrize("name", FAST)
def test_fvcore_agreement_on_some_classifiers(name):
    _check_classifier(name, backward=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if n not in FAST])
def test_fvcore_agreement_on_every_classifier(name):
    _check_classifier(name, backward=True)


