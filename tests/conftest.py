"""Shared test helpers: run a pipeline as a user would, from the repo root."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
