"""The ways a run goes wrong from the command line (issue: one owner for every artifact), each
met as a user meets it, in a subprocess: one line naming the cause, a non-zero exit, no
traceback, and nothing of another run touched."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT
from tests.wandb_reader import find_runs

QUICK = ["trainer.progress=false", "wandb.mode=disabled"]


def _one_line(proc, code: int) -> str:
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _env() -> dict:
    env = dict(os.environ, WANDB_SILENT="true", PYTHONWARNINGS="ignore")
    env.pop("WANDB_MODE", None)
    return env


@pytest.mark.slow  # a subprocess run of 13-18 s: make test stays under 10 min
def test_a_run_dir_in_use_is_refused_and_a_stale_lock_taken_over(pipeline, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pipelines.train", "trainer.epochs=200",
                              f"hydra.run.dir={out}", *QUICK], cwd=ROOT, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoint.pt").exists():
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended too soon"
        history = json.loads((out / "results.json").read_text())["history"]
        proc = pipeline("train", "trainer.epochs=1", f"hydra.run.dir={out}", *QUICK)
        line = _one_line(proc, 1)
        assert line == (f"error: run dir {out} is in use by another run (pid {first.pid}); "
                        "wait for it, or give another hydra.run.dir")
        now = json.loads((out / "results.json").read_text())
        assert now["history"][: len(history)] == history and "test_accuracy" not in now
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 left the lock file with its pid: the kernel dropped the lock, a resume takes it
    done = json.loads((out / "results.json").read_text())["history"]
    proc = pipeline("train", f"trainer.epochs={len(done) + 1}", "trainer.resume=true",
                    f"hydra.run.dir={out}", *QUICK)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / ".lock").read_text() == ""  # released


@pytest.mark.parametrize("override, code, line", [
    ("data.num_classes=5", 1, "error: data.num_classes=5: data=digits has labels 0 .. 9 "
                              "(10 classes); set data.num_classes=10"),  # names both numbers
    ("+trainer.epoch=3", 2, "error: trainer.epoch: no such key in TrainerSettings "
                            "(did you mean epochs?)"),  # a key the schema lacks
])
def test_a_refused_config_is_its_line_and_leaves_no_run_dir(pipeline, tmp_path, override, code,
                                                            line):
    out = tmp_path / "run"
    proc = pipeline("train", override, f"hydra.run.dir={out}", *QUICK)
    assert _one_line(proc, code) == line
    assert not out.exists()


def test_malformed_yaml_names_the_file_and_the_line(pipeline, tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    bad = tmp_path / "conf" / "model" / "mine.yaml"
    bad.write_text("name: mine\nbuilder:\n  channels: [8, 16\n  beta: 2\n")
    out = tmp_path / "run"
    proc = pipeline("train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=mine",
                    f"hydra.run.dir={out}", *QUICK)
    line = _one_line(proc, 2)
    assert line.startswith("error: ") and "mine.yaml" in line and ": line 4: " in line, line
    assert not out.exists()


def test_slurm_without_slurm_points_to_slurm_local(pipeline, tmp_path):
    proc = pipeline("train", "hydra/launcher=slurm", "model.pool.beta=2,4",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", *QUICK, multirun=True)
    assert _one_line(proc, 1) == ("error: hydra/launcher=slurm: srun/sbatch not found; use "
                                  "hydra/launcher=slurm_local to run the SLURM code path locally")
    assert not list((tmp_path / "sweep").glob("[0-9]*"))


@pytest.mark.parametrize("sweep", ["model.pool.beta=range(0)", "model=glob(zzz*)"])
def test_an_empty_sweep_is_refused_and_makes_no_summary_run(pipeline, tmp_path, sweep):
    out = tmp_path / "sweep"
    proc = pipeline("train", sweep, f"hydra.sweep.dir={out}", "trainer.progress=false",
                    multirun=True)
    line = _one_line(proc, 1)
    assert line.startswith("error: the sweep launched no job (overrides: ") and sweep in line
    assert find_runs(tmp_path) == [] and not out.exists()


def test_a_read_only_place_is_one_line(pipeline, tmp_path):
    proc = pipeline("train", "hydra.run.dir=/proc/dnnlab-run", "trainer.epochs=1", *QUICK)
    assert "cannot write /proc/dnnlab-run" in _one_line(proc, 1)
    if os.geteuid() != 0:  # root writes through a mode bit
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        proc = pipeline("train", f"hydra.run.dir={ro / 'run'}", "trainer.epochs=1", *QUICK)
        assert f"cannot write {ro / 'run'}" in _one_line(proc, 1)


@pytest.mark.parametrize("below", [False, True])
def test_a_run_dir_that_is_a_file_says_so(pipeline, tmp_path, below):
    f = tmp_path / "notes.txt"
    f.write_text("a file")
    d = f / "run" if below else f
    proc = pipeline("train", f"hydra.run.dir={d}", "trainer.epochs=1", *QUICK)
    line = _one_line(proc, 1)
    assert f"cannot make the dir {d}: {f} is a file, not a directory" in line, line
    assert "File exists" not in line and f.read_text() == "a file"


@pytest.mark.slow
def test_a_double_ctrl_c_is_one_line_and_no_atexit_traceback(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", "trainer.epochs=200",
                             f"hydra.run.dir={out}", "trainer.progress=false"], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoint.pt").exists():
        time.sleep(0.1)
    for _ in range(3):  # an impatient user
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line.startswith("interrupted at epoch ")
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_a_worker_killed_under_joblib_is_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", "-m", "hydra/launcher=local",
                             "model.pool.beta=2,inf", "trainer.epochs=200",
                             "trainer.progress=false", f"hydra.sweep.dir={sweep}", *QUICK[1:]],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lock, deadline = sweep / "0" / ".lock", time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            lock.exists() and lock.read_text().strip()):
        time.sleep(0.1)
    os.kill(int(lock.read_text()), signal.SIGKILL)  # the worker running job 0 (its lock's pid)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    said = [ln for ln in err.splitlines() if "the launcher lost a job" in ln]
    assert len(said) == 1 and "TerminatedWorkerError" in said[0], err[-3000:]


@pytest.mark.slow
def test_sigusr2_to_submitits_controller_is_one_line_and_leaves_no_orphan(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", "-m",
                             "hydra/launcher=slurm_local", "trainer.epochs=200",
                             "trainer.progress=false", f"hydra.sweep.dir={sweep}", *QUICK[1:]],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    job, deadline = sweep / "0", time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (job / "checkpoint.pt").exists():
        time.sleep(0.1)
    pid = int((job / ".lock").read_text())  # the job's process; its parent: the controller
    with open(f"/proc/{pid}/stat") as f:
        controller = int(f.read().rsplit(")", 1)[1].split()[1])
    os.kill(controller, signal.SIGUSR2)  # what submitit's LocalJob._interrupt sends
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert sum("the launcher lost a job" in ln for ln in err.splitlines()) == 1, err[-3000:]
    for _ in range(100):  # the job noticed its controller gone and stopped: no orphan
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(
                ")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.3)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the job trained on as an orphan")
    assert json.loads((job / "results.json").read_text())["status"] == "interrupted"


class _Silent:
    """A W&B host that accepts connections and never answers."""

    def __enter__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()
        return f"http://127.0.0.1:{self.srv.getsockname()[1]}"

    def _accept(self):
        while True:
            try:
                self.conns.append(self.srv.accept())
            except OSError:
                return

    def __exit__(self, *exc):
        self.srv.close()


@pytest.mark.slow
def test_unreachable_online_wandb_goes_offline_once_per_process(tmp_path):
    sweep = tmp_path / "sweep"
    with _Silent() as url:
        env = _env() | {"WANDB_BASE_URL": url, "WANDB_API_KEY": "x" * 40}
        proc = subprocess.run([sys.executable, "-m", "pipelines.train", "-m",
                               "model.pool.beta=4,inf", "trainer.epochs=1",
                               "trainer.progress=false", "wandb.mode=online",
                               "wandb.init_timeout=3", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: W&B")]
    assert len(warnings) == 1 and "carrying on offline" in warnings[0], proc.stderr
    runs = find_runs(sweep)
    assert len(runs) == 3  # two jobs and the summary run, all kept offline


@pytest.mark.parametrize("args", [["--help"], ["trainer.epochs=abc"]])
def test_help_and_a_config_error_load_no_torch_wandb_sklearn_or_matplotlib(args):
    """What answers --help and a config error (Hydra, its plugins: dnnlab's Optuna sweeper, the
    pipeline's module) imports none of the heavy libraries: they load only in a job."""
    code = ("import runpy, sys; sys.argv = ['pipelines.train', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('pipelines.train', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'wandb', 'sklearn', 'matplotlib', 'scipy') "
            "if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert "HEAVY []" in proc.stderr, proc.stderr[-2000:]
