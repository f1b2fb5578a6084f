"""One run on N processes as users start it, and what they see when it fails: trainer.processes=N
(torch's elastic launch, one line and the failed rank's exit status), torchrun (dnnlab's line
once, from rank 0: torchrun's own failure summary is its parent's, docs/train.md), and Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

QUICK = ["trainer.progress=false", "wandb.mode=disabled"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "pipelines.train"]


def _env() -> dict:
    return dict(os.environ, WANDB_SILENT="true", PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.strip().splitlines() if ln.strip()]


TRAIN = [sys.executable, "-m", "pipelines.train", "trainer.processes=2"]


@pytest.mark.parametrize("override, code, needle", [
    ("trainer.epochs=abc", 2, "trainer.epochs: Value 'abc'"),  # found while composing
    pytest.param("trainer.threads=0", 1, "trainer.threads=0: must be >= 1",  # by each rank
                 marks=pytest.mark.slow),
])
def test_processes_a_bad_value_is_one_line_with_its_status(tmp_path, override, code, needle):
    proc = _run([*TRAIN, f"hydra.run.dir={tmp_path / 'r'}", *QUICK, override])
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = _lines(proc.stderr)
    assert line.startswith("error: ") and needle in line
    assert not (tmp_path / "r").exists()


def test_processes_zero_is_refused():
    proc = _run([sys.executable, "-m", "pipelines.train", "trainer.processes=0", *QUICK])
    assert proc.returncode == 1 and _lines(proc.stderr) == [
        "error: trainer.processes=0: must be >= 1 (N > 1: N processes of one run)"]


def test_start_returns_the_failed_ranks_status(tmp_path):
    """dnnlab.run.processes.start in process (what trainer.processes=2 runs): a value each rank
    refuses comes back as the rank's exit status, 1."""
    from dnnlab.core import distributed
    from dnnlab.run import processes

    assert not distributed.launched() and distributed.children() == []
    code = processes.start(2, "pipelines.train", ["trainer.threads=0", *QUICK], tmp_path / "r")
    assert code == 1 and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_torchrun_a_config_error_is_said_once_by_rank_0(tmp_path):
    proc = _run([*TORCHRUN, "trainer.epochs=abc", f"hydra.run.dir={tmp_path / 'r'}"])
    ours = [ln for ln in _lines(proc.stderr) if ln.startswith("error: ")]
    assert ours == ["error: trainer.epochs: Value 'abc' of type 'str' could not be converted "
                    "to Integer"], proc.stderr[-3000:]
    assert proc.returncode != 0  # torchrun's own summary and status follow (docs/train.md)


@pytest.mark.slow
def test_processes_ctrl_c_is_130_and_one_line_then_the_run_resumes(tmp_path):
    d = tmp_path / "r"
    args = [*TRAIN, f"hydra.run.dir={d}", *QUICK, "trainer.limit_batches=4"]
    proc = subprocess.Popen([*args, "trainer.epochs=200"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (d / "checkpoint.pt").exists():
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    (line,) = _lines(err)
    assert line.startswith("interrupted at epoch ") and "trainer.resume=true" in line, err
    done = _run([*args, "trainer.epochs=3"])  # resumes on two processes, to the end
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((d / "results.json").read_text())
    assert res["status"] == "done" and [h["epoch"] for h in res["history"]] == [0, 1, 2]
    assert done.stdout.count("best val accuracy") == 1
