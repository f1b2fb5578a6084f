"""`trainer.processes=N`: one run as N processes on this machine, started by the job itself
through torch's elastic launch API (what torchrun calls), reporting a failure in one line."""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from omegaconf import DictConfig

from dnnlab.core.distributed import children, launched
from dnnlab.run import hydra_job
from dnnlab.run.results import Results


def spawned(cfg: DictConfig, module: str) -> Results | None:
    """With trainer.processes > 1 in a process no launcher started: run the job as that many
    processes and return rank 0's results (SystemExit with the failed rank's status); else None,
    and the caller runs the job itself."""
    n = cfg.trainer.processes
    if not (isinstance(n, int) and n > 1) or launched():
        return None
    hj = hydra_job.current()
    code = start(n, module, hj.overrides, hj.run_dir)
    if code:
        raise SystemExit(code)  # the failed rank printed its line
    return Results.read(hj.run_dir)


def start(n: int, module: str, overrides: list[str], run_dir: Any) -> int:
    """`trainer.processes=N`: run `python -m <module> <overrides>` as N processes of one run on
    this machine, through torch's elastic launch API (what torchrun calls, as Lightning's
    devices=N does), all writing to `run_dir` (rank 0 alone). Unlike torchrun it reports a
    failure in the one line the failed rank printed and keeps its exit status (2 for a config
    error, 130 for Ctrl-C), with no ChildFailedError summary. Returns 0 when all succeeded."""
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):  # each has its own level set
        if name.startswith("torch.distributed"):  # the failure is the failed rank's line
            logging.getLogger(name).setLevel(logging.CRITICAL)
    keep = [o for o in overrides if o.split("=", 1)[0] != "hydra.run.dir"]
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n,
                          run_id=f"dnnlab-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
                          signals_to_handle="SIGTERM,SIGHUP,SIGQUIT")  # SIGINT: forwarded
    def forward(signum, frame):  # Ctrl-C: each rank stops as on one process (exit 130)
        for pid in children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)

    before = signal.signal(signal.SIGINT, forward)
    try:
        elastic_launch(config, sys.executable)("-m", module, *keep, f"hydra.run.dir={run_dir}")
    except ChildFailedError as err:
        rank, failure = min(err.failures.items(),
                            key=lambda kv: (kv[1].exitcode < 0, kv[0]))  # a rank's own exit
        code = failure.exitcode
        return 128 - code if code < 0 else code  # killed by signal s: 128 + s, as a shell says
    except SignalException as err:  # SIGTERM to this process: the ranks are stopped
        return 128 + int(err.sigval)
    finally:
        signal.signal(signal.SIGINT, before)
    return 0
