"""The benchmark scripts run end to end (briefly: a pair of tiny blocks per row) and print
every table; their figures are not checked here (benchmarks print ratios, tests do not time)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # 22 s: the fast suite keeps its 10-minute budget
def test_train_benchmark_prints_every_row_and_the_control(capsys):
    bench = _load("train.py")
    plan = bench.Plan(rounds=2, block=0.001, min_calls=1, calls=1)
    bench.run(quick=True, with_compile=False, plan=plan)
    out = capsys.readouterr().out
    for text in ("training step", "torch vs torch (noise)", "ratio IQR", "max pooling",
                 "global of (64, 64, 4, 4)", str(plan), "worst time ratio"):
        assert text in out
    assert out.count("inf (ties first)") == 2


@pytest.mark.slow
def test_train_benchmark_with_compiled_columns(capsys):
    bench = _load("train.py")
    bench.run(quick=True, with_compile=True,
              plan=bench.Plan(rounds=2, block=0.001, min_calls=1, calls=1))
    out = capsys.readouterr().out
    assert "compiled ratio" in out and "compiled training step" in out


@pytest.mark.slow
def test_parity_benchmark_runs_end_to_end():
    """benchmarks/parity.py for one epoch and one pair: the losses equal, every setting's row
    and the fixed costs printed, exit 0 (its callback follows the loop's Callback protocol)."""
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parity.py"), "--epochs",
                           "1", "--rounds", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("-> EQUAL to 1e-6") == 2, proc.stdout
    for text in ("default (probes/20", "trainer.probe_every=0", "all four off", "wandb_init",
                 "fixed cost of a run", "95% CI"):
        assert text in proc.stdout
