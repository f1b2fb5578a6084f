"""dnnlab.opcount.reconcile: dnnlab's counts equal fvcore's (conv, linear, matmul) and, for a
training step, torch's FlopCounterMode's; on real torchvision classifiers."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dnnlab.opcount import count_ops, reconcile, torchvision_input_shape
from tests.opcount.test_params import published_params


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
    from dnnlab.opcount import build_meta
    from dnnlab.opcount.build import materialize

    model = build_meta(lambda: torchvision.models.get_model(name))
    shape = torchvision_input_shape(name, model)
    report = count_ops(model, shape)
    assert report.params["total"] == sum(p.numel() for p in model.parameters()), name
    if name != "vit_h_14":  # published for its 518x518 weights: a longer pos_embedding
        assert report.params["total"] == published_params(name, model), name
    model = materialize(model)
    # every classifier's fvcore run, as before the memory budget (regnet_y_128gf needs ~5 GB)
    rec = reconcile(model, shape, report=report, backward=backward, max_gb=16)
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




def test_input_gradient_counted_when_the_input_requires_grad():
    """resnet18 with an input that requires grad: the first conv's input gradient is counted,
    and forward + backward equal FlopCounterMode's exactly (a training step on meta)."""
    model = torchvision.models.resnet18()
    plain = count_ops(model, [2, 3, 64, 64])
    x = torch.empty(2, 3, 64, 64, device="meta", requires_grad=True)
    report = count_ops(model, inputs=x)
    first = report.layers[0]
    assert first.bwd_macs == 2 * first.macs and plain.layers[0].bwd_macs == first.macs
    assert report.total_macs(backward=True) == plain.total_macs(backward=True) + first.macs
    fc = reconcile(model, inputs=x, report=report).flop_counter
    assert fc["match"] and fc["backward_match"], fc
    assert fc["backward_flops_torch"] == 2 * report.total_macs(backward=True)


def test_input_gradient_follows_autograd_through_frozen_layers():
    """A frozen conv before a trainable one: no gradient reaches the frozen conv's input unless
    the input requires grad; then both convs get an input gradient and only the second a
    weight gradient, as autograd computes (checked with FlopCounterMode)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model[0].requires_grad_(False)
    for grad in (False, True):
        x = torch.empty(1, 3, 16, 16, device="meta", requires_grad=grad)
        report = count_ops(model, inputs=x)
        a, b = report.layers[0], report.layers[-1]
        assert (a.bwd_macs, b.bwd_macs) == ((a.macs, 2 * b.macs) if grad else (0, b.macs))
        fc = reconcile(model, inputs=x, report=report).flop_counter
        assert fc["backward_match"] and fc["backward_flops_torch"] == 2 * (
            a.bwd_macs + b.bwd_macs), fc


def test_reconcile_skips_fvcore_above_the_memory_budget():
    """resnet18 at 8000 x 8000: fvcore on real tensors would need ~20 GB (it used to be killed):
    estimated from the meta count, it is skipped with one line; FlopCounterMode runs on meta.
    `reconciled` is None (a check did not run), not True."""
    from dnnlab.opcount.memory import GB, real_run_bytes

    model = torchvision.models.resnet18()
    report = count_ops(model, [1, 3, 8000, 8000])
    assert real_run_bytes(report) > 4 * GB
    rec = reconcile(model, [1, 3, 8000, 8000], report=report, max_gb=4)
    assert rec.reconciled is None and rec.skipped == ["fvcore"] and rec.failed == []
    (line,) = rec.skip_reasons
    assert line.startswith("fvcore skipped") and "reconcile_max_gb=4" in line
    assert rec.flop_counter["match"] is True and rec.flop_counter["device"] == "meta"
    small = reconcile(model, [1, 3, 64, 64])  # under the budget: every check runs
    assert small.reconciled is True and small.skipped == []


def test_reconciled_is_never_true_when_fvcore_did_not_run():
    """A model fvcore cannot trace (it takes positional inputs only, and the first is not
    given): reconciled None, with why; a count that differs from fvcore: False, failed."""
    class KeywordOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x=None, y=None):
            return self.fc(y)

    rec = reconcile(KeywordOnly(), inputs={"y": torch.zeros(2, 4)}, backward=False)
    assert rec.reconciled is None and rec.skipped == ["fvcore"], (rec.fvcore_error, rec.failed)
    assert rec.skip_reasons[0].startswith("fvcore did not run: ")
    report = count_ops(nn.Linear(4, 3), [2, 4])
    report.layers[0].macs += 1  # a count that disagrees
    bad = reconcile(nn.Linear(4, 3), [2, 4], report=report, backward=False)
    assert bad.reconciled is False and "fvcore" in bad.failed
