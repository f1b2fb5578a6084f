"""A training run's state besides its weights: how far it got (epoch, step, the steps of an epoch
begun), what it recorded (the history, the probes' worst errors) and the random number
generators' states. `fit` (dnnlab.train.loop) keeps one TrainState; the checkpoint
(dnnlab.train.resume) stores `to_dict()` beside the model's, optimizer's and scheduler's state
dicts and a resume starts from `from_dict`. The dict is the checkpoint's historical layout
(`epoch`, `step`, `history`, `probe_worst`, `partial`, `rng`), so older checkpoints load.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

WORST = ("max_abs_err", "max_rel_err")  # the probes' errors (dnnlab.train.probes.compare rows)


@dataclass
class Partial:
    """An epoch begun (trainer.checkpoint_every): its optimizer steps done and running sums."""

    steps: int  # steps of the epoch already trained (a resume skips them: the same shuffle)
    seen: int  # samples so far
    loss: float  # summed loss so far
    correct: int  # correct predictions so far
    seconds: float  # training time so far


@dataclass
class TrainState:
    """Where training stands: `epoch` done (-1: none yet), the global `step`, the records of
    the epochs done, `partial` (the epoch `epoch + 1` begun, or None), the probes' worst errors
    and the RNG states (torch's CPU generator and Python's)."""

    epoch: int = -1
    step: int = 0
    history: list = field(default_factory=list)
    partial: Partial | None = None
    worst: dict = field(default_factory=lambda: dict.fromkeys(WORST, 0.0))
    rng: dict | None = None  # {"torch": ByteTensor, "python": list}; None: not captured
    resumed: int | None = None  # the epoch a resumed state was saved after (not stored)

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1

    def capture_rng(self) -> None:
        self.rng = {"torch": torch.get_rng_state(), "python": list(random.getstate())}

    def restore_rng(self) -> None:
        if self.rng is not None:
            torch.set_rng_state(self.rng["torch"])
            py = self.rng["python"]
            random.setstate((py[0], tuple(py[1]), py[2]))

    def probed(self, rows: list[dict]) -> None:
        """The worst errors so far, with a probe's rows."""
        self.worst = {k: max([v] + [r[k] for r in rows]) for k, v in self.worst.items()}

    def to_dict(self) -> dict[str, Any]:
        """The state as the checkpoint stores it (tensors, lists and numbers only)."""
        return {"epoch": self.epoch, "step": self.step, "history": list(self.history),
                "probe_worst": dict(self.worst), "rng": self.rng,
                "partial": asdict(self.partial) if self.partial is not None else None}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        """The state of a checkpoint dict (`to_dict`'s, or an older one without the probes'
        errors or the partial epoch); `resumed` is its epoch."""
        p = d.get("partial")
        partial = Partial(int(p["steps"]), int(p["seen"]), float(p["loss"]), int(p["correct"]),
                          float(p["seconds"])) if p else None
        worst = dict.fromkeys(WORST, 0.0) | dict(d.get("probe_worst") or {})
        return cls(epoch=int(d["epoch"]), step=int(d["step"]), history=list(d["history"]),
                   partial=partial, worst=worst, rng=d.get("rng"), resumed=int(d["epoch"]))
