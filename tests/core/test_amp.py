"""trainer.precision: dnnlab's autograd Functions under torch.autocast (dnnlab.core.amp): the smooth
max computes its log-sum-exp in float32, so bf16 keeps the (1a) bound, and its gradient reaches
float32 inputs as float32; the conv runs in the autocast dtype like torch's; a bf16 training run
ends within 0.02 of float32's test accuracy with finite losses and float64 probes."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dnnlab.functional import smooth_max
from dnnlab.nn import Conv2d, SmoothMaxPool2d
from tests.conftest import run_pipeline


@pytest.mark.parametrize("beta", [0.5, 4.0, 64.0])
def test_smooth_max_keeps_its_bound_under_bf16_autocast(beta):
    torch.manual_seed(0)
    x = (torch.randn(32, 257) * 3).requires_grad_(True)  # n = 257: log(n)/beta is the bound
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = smooth_max(x, beta)
    assert y.dtype == torch.float32  # the log-sum-exp stays in float32
    gap = y - x.amax(-1)
    assert (gap >= -1e-6).all() and (gap <= math.log(257) / beta + 1e-6).all()
    ref = torch.logsumexp(beta * x.double(), -1) / beta
    assert torch.allclose(y.double(), ref, atol=1e-5)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.dtype == torch.float32 and torch.allclose(g.double(), torch.softmax(
        beta * x.double(), -1), atol=1e-6)


def test_pool_and_conv_under_bf16_autocast():
    torch.manual_seed(0)
    conv, pool = Conv2d(1, 4, 3, padding=1), SmoothMaxPool2d(4.0, 2)
    x = torch.randn(8, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        out = pool(torch.relu(h))
    assert h.dtype == torch.bfloat16  # as torch's Conv2d under autocast
    assert out.dtype == torch.float32  # the pooling's log-sum-exp in float32
    out.sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(h.float(), ref, atol=0.05)


@pytest.mark.slow
def test_bf16_training_is_within_002_of_float32(tmp_path):
    res = {}
    for prec in ("32", "bf16"):
        proc = run_pipeline("train", "trainer.epochs=3", f"trainer.precision={prec}",
                            "wandb.mode=disabled", "trainer.progress=false",
                            f"hydra.run.dir={tmp_path / prec}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        res[prec] = json.loads((tmp_path / prec / "results.json").read_text())
    low, ref = res["bf16"], res["32"]
    assert abs(low["test_accuracy"] - ref["test_accuracy"]) <= 0.02
    assert all(math.isfinite(h["train_loss"]) for h in low["history"])
    assert 0 < low["probe_max_rel_err"] < 1e-8  # the probes compare in float64
