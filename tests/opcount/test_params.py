"""OpReport.params / buffers: distinct parameter tensors once (tied weights once), trainable =
requires_grad, buffers apart; against torchvision's published parameter counts."""
from __future__ import annotations

import pytest
import torch
import torchvision

from dnnlab.opcount import build_meta, count_ops, torchvision_input_shape


def published_params(name: str, model: torch.nn.Module | None = None) -> int:
    """torchvision's own figure for the network (its weights' `num_params`); the auxiliary
    heads that googlenet and inception_v3 have when built without weights are added."""
    weights = torchvision.models.get_model_weights(name)
    aux = 0 if model is None else sum(p.numel() for n, p in model.named_parameters()
                                      if n.startswith("aux"))
    return int(next(iter(weights)).meta["num_params"]) + aux


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "mobilenet_v2", "vit_b_16", "googlenet"])
def test_params_equal_torchvision_published(name):
    model = build_meta(lambda: torchvision.models.get_model(name))
    report = count_ops(model, torchvision_input_shape(name, model))
    n = published_params(name, model)
    assert report.params == {"total": n, "trainable": n}
    assert report.module_params[""] == report.params["total"]


def test_frozen_parameters_and_buffers_apart():
    model = build_meta(lambda: torchvision.models.resnet18())
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    report = count_ops(model, [1, 3, 64, 64])
    frozen = sum(p.numel() for p in model.layer1.parameters())
    assert report.params["total"] == 11_689_512
    assert report.params["trainable"] == 11_689_512 - frozen
    assert report.module_params["layer1"] == frozen
    # 20 batch norms: running_mean, running_var (C each), num_batches_tracked (1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert report.buffers == {"total": sum(2 * m.num_features + 1 for m in bns),
                              "tensors": 3 * len(bns)}


def test_gpt2_tied_weights_counted_once():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128,
                     bos_token_id=0, eos_token_id=0)
    model = build_meta(lambda: GPT2LMHeadModel(cfg))
    assert model.lm_head.weight is model.transformer.wte.weight
    report = count_ops(model, inputs={"input_ids": torch.zeros(1, 16, dtype=torch.long)})
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    E, V, P, L = 64, 1000, 128, 2
    block = (2 * 2 * E + (E * 3 * E + 3 * E) + (E * E + E) + (E * 4 * E + 4 * E)
             + (4 * E * E + E))  # two layer norms, c_attn, c_proj, c_fc, mlp c_proj
    assert report.params["total"] == V * E + P * E + L * block + 2 * E  # + ln_f
    assert every - report.params["total"] == V * E  # lm_head is wte: once
    assert report.module_params["lm_head"] == 0  # owned by transformer.wte (first path)
