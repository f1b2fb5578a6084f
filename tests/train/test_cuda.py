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


def test_a_training_step_never_waits_for_the_device():
    """torch.cuda's sync debug mode turns every host-device synchronization into an error:
    the step itself (forward, loss, backward, Adam) makes none; its losses are read later
    (dnnlab.train.losses), in one copy."""
    from dnnlab.core.distributed import World
    from dnnlab.train.losses import Pending
    from dnnlab.train.step import Stepper

    seed_everything(0)
    model = SmoothMaxCNN(1, 10, (16, 32, 32), beta=4.0, normalized=True).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    device = torch.device("cuda")
    stepper = Stepper(opt, TrainerSettings(device="cuda", progress=False), World(), device,
                      model.parameters())
    g = torch.Generator().manual_seed(0)
    batches = [[(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,),
                                                                      generator=g))]
               for _ in range(4)]
    stepper.step(batches[0], model)  # the first step allocates Adam's state
    pending = Pending()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, group in enumerate(batches[1:]):
            sums = stepper.step(group, model)
            pending.add(i + 2, 0, 0.01, sums["sums"][0], sums["n"])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [s for s, *_ in pending.take()] == [2, 3, 4]
