"""One optimizer step, however it is made: K micro-batches (trainer.accumulate), each split over
the ranks of a distributed run, under torch.autocast (trainer.precision), the gradient norm
clipped (trainer.grad_clip).

The loss of every part is its summed cross-entropy over the step's whole batch size n, times
the number of ranks (DDP averages the gradients over them): the gradients add up to those of
the mean loss over the n samples, as one process with batch n computes them. So batch B/K x K
gives batch B's step, and N processes give one process's.

    stepper = Stepper(optimizer, settings, world, device, params)
    out = stepper.step([(x1, y1), (x2, y2)], forward)  # {"sums", "n"} over the ranks
    # "sums": (2,) float64 on the device, the summed cross-entropy and the correct count
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from dnnlab.core.distributed import World
from dnnlab.core.errors import ConfigError
from dnnlab.train.settings import TrainerSettings

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """torch.autocast for trainer.precision (a no-op context for 32)."""
    if precision == "32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16: float16 training needs CUDA (device "
                          f"{device}); use trainer.precision=bf16 on CPU")
    return torch.autocast(device.type, dtype=DTYPES[precision])


def groups(batches: Iterable, k: int) -> Iterator[list]:
    """Consecutive groups of k loader batches (the last may be shorter): one optimizer step."""
    group = []
    for b in batches:
        group.append(b)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


class Stepper:
    """Makes the optimizer steps of a run, with one GradScaler for all of them (`ddp`: the DDP
    wrapper, for no_sync between micro-batches)."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: TrainerSettings,
                 world: World, device: torch.device, params: Iterable[torch.nn.Parameter],
                 ddp=None):
        self.optimizer, self.settings = optimizer, settings
        self.world, self.device, self.ddp = world, device, ddp
        self.params = list(params)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        autocast(settings.precision, device)  # refuse fp16 without CUDA before training

    def step(self, group: list, forward: Callable) -> dict:
        """Train on one group of loader batches through `forward` (the model as trained: maybe
        DDP-wrapped or compiled). Returns `sums`, the (2,) float64 tensor on the device of the
        summed cross-entropy and the correct count over every rank (read by the caller when it
        needs them), and `n`, the step's samples."""
        n = sum(len(y) for _, y in group)
        opt, w = self.optimizer, self.world
        opt.zero_grad(set_to_none=True)
        losses, hits = [], []
        for j, (x, y) in enumerate(group):
            lo, hi = w.share(len(y))
            x, y = x[lo:hi].to(self.device), y[lo:hi].to(self.device)  # (b, C, H, W), (b,)
            sync = self.ddp is None or j == len(group) - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(self.settings.precision, self.device):
                    out = forward(x)  # (b, num_classes)
                # the loss in float32 whatever the precision
                part = F.cross_entropy(out.float(), y, reduction="sum")
                self.scaler.scale(part * (w.size / n)).backward()
            losses.append(part.detach().double())
            hits.append((out.argmax(1) == y).sum().double())
        # (2,): summed loss, correct; the micro-batches' parts added in float64
        sums = w.all_sum(torch.stack([torch.stack(losses), torch.stack(hits)]).sum(1))
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        # no look at the loss here (a host sync on a GPU): a non-finite one is found when the
        # loop reads it (dnnlab.train.losses) and stops the run before its next checkpoint
        self.scaler.step(opt)
        self.scaler.update()
        return {"sums": sums, "n": n}
