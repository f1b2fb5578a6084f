"""The training steps' losses, kept on the device until they are read.

Reading a number from a GPU waits for every kernel queued before it: a loop that looked at each
step's loss (to log it, or to stop on a NaN) would make the host wait for the device at every
step. Here the summed loss of each step stays a 0-d tensor on the device; `take` reads all the
waiting ones in one copy. The loop reads them at most every FLUSH_S seconds, and whenever it
needs them: before a checkpoint, at the end of an epoch, on an interruption
(docs/train.md, "Logging without waiting"). The callbacks then get every step's loss, in step
order, as before; a W&B history row keeps its step.

    pending = Pending()
    pending.add(step, epoch, lr, loss_sum, n)      # after each optimizer step; no host sync
    if pending.due():
        for step, epoch, lr, loss in pending.take():  # one device-to-host copy
            ...
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

FLUSH_S = 1.0  # the longest a loss waits: a non-finite loss stops the run within about this


@dataclass
class Pending:
    """The steps whose losses have not been read yet, oldest first."""

    steps: list = field(default_factory=list)  # (step, epoch, lr, n): n samples in the step
    sums: list = field(default_factory=list)  # each step's summed loss: 0-d float64, device
    probes: list = field(default_factory=list)  # (step, state, rows): probes not handed over
    since: float = field(default_factory=time.perf_counter)  # the last read

    def add(self, step: int, epoch: int, lr: float, loss_sum: torch.Tensor, n: int) -> None:
        self.steps.append((step, epoch, lr, n))
        self.sums.append(loss_sum)

    def due(self) -> bool:
        """FLUSH_S seconds have passed since the last read."""
        return bool(self.steps) and time.perf_counter() - self.since >= FLUSH_S

    def take(self) -> list[tuple[int, int, float, float]]:
        """(step, epoch, lr, mean loss over the step's samples) of every waiting step, read in
        one copy; none wait afterwards."""
        self.since = time.perf_counter()
        if not self.steps:
            return []
        values = torch.stack(self.sums).tolist()  # (k,) float64: the one host sync
        out = [(s, e, lr, v / n) for (s, e, lr, n), v in zip(self.steps, values)]
        self.steps, self.sums = [], []
        return out
