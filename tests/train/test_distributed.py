"""One training run on two processes (gloo on CPU), as users start it: torchrun, SLURM tasks
through submitit's local executor, a rank killed and the run resumed; and the parts in
process: a rank's share of a batch, micro-batches that add up to the batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dnnlab.core.distributed import World
from tests.conftest import ROOT, run_pipeline
from tests.wandb_reader import find_runs, summarize

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "pipelines.train"]
QUICK = ["trainer.progress=false"]


def _env():
    return dict(os.environ, WANDB_SILENT="true", PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _steps(run_dir: Path) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["trainer/global_step"] for r in rows if "train/loss" in r]


def test_a_rank_share_covers_the_batch_once():
    for n in (0, 1, 5, 64, 54):
        for size in (1, 2, 3):
            parts = [World(r, size).share(n) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1
    w = World()
    assert not w.active and w.all_sum(torch.ones(2)).tolist() == [1.0, 1.0] and w.broadcast(3) == 3


def test_world_from_torchrun_env_and_dead_peers(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = World.from_env()
    assert (w.rank, w.size, w.local_rank, w.is_main, w.active) == (1, 2, 1, False, False)
    assert w.device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.delenv("RANK")
    assert World.from_env() == World()
    # a peer that exited and was reaped, one that is a zombie, one alive (this process)
    gone = subprocess.Popen(["true"])
    gone.wait()
    zombie = subprocess.Popen(["true"])
    deadline = time.time() + 10
    while time.time() < deadline and _state(zombie.pid) != "Z":
        time.sleep(0.01)
    host = socket.gethostname()
    w = World(0, 4, peers=[(host, os.getpid()), (host, gone.pid), (host, zombie.pid),
                           ("another-host", gone.pid)])
    assert w.dead() == [(1, gone.pid), (2, zombie.pid)]  # another host's pids are not checked
    zombie.wait()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


@pytest.mark.slow
def test_torchrun_two_processes_one_run(tmp_path):
    """One run dir, one results.json, one W&B run, each step once; the 1-process result."""
    one = tmp_path / "one"
    ref = run_pipeline("train", "trainer.epochs=3", f"hydra.run.dir={one}", *QUICK)
    assert ref.returncode == 0, ref.stderr[-2000:]
    two = tmp_path / "two"
    proc = subprocess.run([*TORCHRUN, "trainer.epochs=3", f"hydra.run.dir={two}", *QUICK],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _results(one), _results(two)
    assert b["status"] == "done" and abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.01
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)  # the same global batches
    assert _steps(two) == list(range(1, b["steps"] + 1)) and b["steps"] == a["steps"]
    (run,) = find_runs(two)  # one W&B run
    assert summarize(run)["summary"]["test/accuracy"] == {"last": b["test_accuracy"]}
    assert proc.stdout.count("best val accuracy") == 1  # rank 0 alone reports
    # without hydra.run.dir: rank 0 picks the run dir, the other rank's is removed
    day = ROOT / "outputs" / "train" / time.strftime("%Y-%m-%d")
    before = set(day.iterdir()) if day.exists() else set()
    proc = subprocess.run([*TORCHRUN, "trainer.epochs=1", "wandb.mode=disabled", *QUICK],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (made,) = set(day.iterdir()) - before
    assert _results(made)["status"] == "done"


@pytest.mark.slow
def test_a_slurm_sweep_whose_jobs_are_two_task_ddp_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_pipeline("train", "hydra/launcher=slurm_local", "hydra.launcher.tasks_per_node=2",
                        "model.pool.beta=4,inf", "trainer.epochs=2", "wandb.mode=disabled",
                        f"hydra.sweep.dir={sweep}", *QUICK, multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = sorted((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 4  # two jobs of two tasks each
    summary = json.loads((sweep / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done", "done"]
    for job, beta in ((0, "4"), (1, "inf")):
        ref = run_pipeline("train", "trainer.epochs=2", "wandb.mode=disabled",
                           f"model.pool.beta={beta}", f"hydra.run.dir={tmp_path / beta}", *QUICK)
        assert ref.returncode == 0
        got, want = _results(sweep / str(job)), _results(tmp_path / beta)
        assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-3)
        assert _steps(sweep / str(job)) == list(range(1, got["steps"] + 1))


def _rank_pid(rank: int, marker: str) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and marker.encode() in cmd:
            return int(d.name)
    return None


@pytest.mark.slow
def test_a_dead_rank_is_one_line_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    marker = f"hydra.run.dir={run}"
    proc = subprocess.Popen([*TORCHRUN, "trainer.epochs=6", marker, *QUICK], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "checkpoint.pt").exists():
        time.sleep(0.05)
    pid = _rank_pid(1, marker)
    assert pid is not None and proc.poll() is None, "the run ended before its first checkpoint"
    os.kill(pid, 9)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    ours = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(ours) == 1 and f"rank 1 (pid {pid}) died at epoch" in ours[0], err[-3000:]
    assert "its last checkpoint is intact" in ours[0]
    torch.load(run / "checkpoint.pt", weights_only=True)  # intact
    # resumed on one process (the checkpoint holds no per-rank state)
    again = run_pipeline("train", "trainer.epochs=6", marker, *QUICK)
    assert again.returncode == 0, again.stderr[-2000:]
    ref = run_pipeline("train", "trainer.epochs=6", f"hydra.run.dir={tmp_path / 'ref'}", *QUICK)
    assert ref.returncode == 0
    got, want = _results(run), _results(tmp_path / "ref")
    assert got["test_accuracy"] == want["test_accuracy"]
    assert [h["epoch"] for h in got["history"]] == list(range(6))
    assert len({summarize(f)["run"].run_id for f in find_runs(run)}) == 1


@pytest.mark.slow  # a subprocess run of 13-18 s: make test stays under 10 min
def test_debug_fast_and_overfit(tmp_path):
    """debug=fast: the whole pipeline in seconds, W&B off; debug=overfit: one batch learned."""
    fast = run_pipeline("train", "debug=fast", f"hydra.run.dir={tmp_path / 'fast'}")
    assert fast.returncode == 0, fast.stderr[-2000:]
    r = _results(tmp_path / "fast")
    assert r["status"] == "done" and r["steps"] == 3 and len(r["history"]) == 1
    assert not (tmp_path / "fast" / "wandb").exists() and r["probe_max_rel_err"] > 0
    over = run_pipeline("train", "debug=overfit", f"hydra.run.dir={tmp_path / 'over'}")
    assert over.returncode == 0, over.stderr[-2000:]
    r = _results(tmp_path / "over")
    assert r["history"][-1]["train_accuracy"] == 1.0 and r["test_accuracy"] == 1.0
