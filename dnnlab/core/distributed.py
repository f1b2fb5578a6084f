"""One training run on many processes: torch.distributed under torchrun or as SLURM tasks.

    world = World.from_env()       # RANK/WORLD_SIZE (torchrun) or submitit's tasks; else 1 process
    world.init()                   # the process group: gloo for CPU tensors, nccl for CUDA ones
    lo, hi = world.share(n)        # this rank's part of a global batch of n samples
    world.all_sum(t)               # sums over the ranks (a no-op on one process)

Rank 0 picks the run dir and writes everything; the others train their share of every global
batch and take part in the reductions (docs/train.md, "More than one process").
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(seconds=120)  # a rank that dies: the others stop within this


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    peers: list = field(default_factory=list)  # (host, pid) of every rank, once the group is up

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:  # more than one process, and the group is up
        return self.size > 1 and dist.is_available() and dist.is_initialized()

    @staticmethod
    def from_env() -> World:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else submitit's job environment when a
        job has several tasks (its master address exported for torch.distributed), else one."""
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                         int(os.environ.get("LOCAL_RANK", 0)))
        if "SUBMITIT_EXECUTOR" in os.environ:  # a job submitit started (not any SLURM shell)
            try:
                import submitit

                env = submitit.JobEnvironment()
                if env.num_tasks > 1:
                    submitit.helpers.TorchDistributedEnvironment().export(
                        set_cuda_visible_devices=False)
                    return World(env.global_rank, env.num_tasks, env.local_rank)
            except RuntimeError:  # not inside a submitit job
                pass
        return World()

    def init(self) -> None:
        """Start the process group (once): gloo for CPU tensors, nccl for CUDA ones."""
        if self.size > 1 and not dist.is_initialized():
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, rank=self.rank, world_size=self.size,
                                    timeout=TIMEOUT)
            self.peers = [None] * self.size
            dist.all_gather_object(self.peers, (socket.gethostname(), os.getpid()))

    def dead(self) -> list[tuple[int, int]]:
        """(rank, pid) of the ranks on this host whose process is gone or a zombie (a kill -9,
        a crash; its launcher has not reaped it yet)."""
        host = socket.gethostname()
        return [(rank, pid) for rank, (h, pid) in enumerate(self.peers)
                if h == host and rank != self.rank and not _alive(pid)]


    def device(self, device: torch.device) -> torch.device:
        """One CUDA device per local rank; CPU as given."""
        if device.type == "cuda" and self.size > 1:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def share(self, n: int) -> tuple[int, int]:
        """[lo, hi): this rank's contiguous part of n samples (sizes differ by at most 1)."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active:
            dist.destroy_process_group()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:  # no such process (or no /proc: assume alive)
        return not os.path.isdir("/proc")


def launched() -> bool:
    """Whether this process is one rank of a run a launcher started (torchrun, `start`)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ



def children() -> list[int]:
    """The pids of this process's children (the ranks `start` launched)."""
    me, out = os.getpid(), []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        out.append(int(d))
    return out
