"""Shared test helpers: run a pipeline as a user would, from the repo root."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def is_png(path: Path) -> bool:
    """`path` is a PNG file: what a pipeline promises in its run dir. What the figure draws is
    checked on the matplotlib Figure itself (the `drawn` fixture), in each topic's plot and
    report tests."""
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_pipeline(name: str, *overrides: str, multirun: bool = False, timeout: int = 600
                 ) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_SILENT="true", HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore")
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", f"pipelines.{name}"] + (["-m"] if multirun else []) + list(
        overrides)
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def pipeline():
    return run_pipeline


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures a plot function drew: dnnlab.core.plots.save closes each figure
    once saved, so the fixture keeps them open and returns them, for a test to read what is
    drawn (axes, labels, lines, data) rather than the PNG's bytes."""
    from dnnlab.core.plots import plt

    close = plt.close
    close("all")
    monkeypatch.setattr(plt, "close", lambda *args, **kwargs: None)
    yield lambda: [plt.figure(n) for n in plt.get_fignums()]
    close("all")


def kill_9_after_first_checkpoint(run_dir: Path, *overrides: str) -> None:
    """Start pipelines.train into `run_dir` and kill -9 it as soon as its first checkpoint is
    on disk (the test fails if the run ends before)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", WANDB_SILENT="true")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", f"hydra.run.dir={run_dir}",
                             *overrides], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (Path(run_dir) / "checkpoint.pt").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
