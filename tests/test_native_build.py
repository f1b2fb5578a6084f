"""The C++ pooling kernel's build, as two checkouts on one machine meet it: one build, keyed by
the source's hash (and torch's, Python's versions and the flags), found by both, never rebuilt
by the other (its .so and build.ninja untouched), and build.ninja naming no checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnnlab.smoothmax import native

ROOT = Path(__file__).resolve().parents[1]
CODE = ("from dnnlab.smoothmax import native; k = native.kernels(); "
        "print(native.__file__); print(native.build_directory()); print(k is not None)")


def _checkout(where: Path) -> Path:
    """A copy of the dnnlab package: another clone of the repository on this machine."""
    shutil.copytree(ROOT / "dnnlab", where / "dnnlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return where


def _run(checkout: Path, build_root: Path) -> tuple[list[str], str]:
    env = dict(os.environ, PYTHONPATH=str(checkout), DNNLAB_NATIVE_DIR=str(build_root),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=600, check=True)
    return proc.stdout.split(), proc.stderr


def _two_checkouts_share_one_build(tmp_path: Path, build_root: Path) -> None:
    a, b = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    out_a, _ = _run(a, build_root)
    assert out_a[0].startswith(str(a)) and out_a[2] == "True"
    so = Path(out_a[1]) / f"{native.NAME}.so"
    ninja = so.with_name("build.ninja")
    before = (so.stat().st_mtime_ns, ninja.read_text())
    out_b, err_b = _run(b, build_root)
    assert out_b[0].startswith(str(b)) and out_b[1:] == out_a[1:]  # the same build dir
    assert "compiling" not in err_b
    assert (so.stat().st_mtime_ns, ninja.read_text()) == before  # not rebuilt
    assert f"{a}{os.sep}" not in before[1] and f"{b}{os.sep}" not in before[1]  # no checkout


def test_two_checkouts_load_one_build(tmp_path):
    if native.kernels() is None:
        pytest.skip("the kernel cannot be built here (no C++ compiler); the torch path runs")
    root = Path(native.build_directory()).parent  # this session's build, made at set-up
    _two_checkouts_share_one_build(tmp_path, root)


@pytest.mark.slow
def test_one_checkout_builds_the_other_loads(tmp_path):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    _two_checkouts_share_one_build(tmp_path, tmp_path / "build")


def test_the_build_is_keyed_by_the_source(tmp_path):
    a = _checkout(tmp_path / "a")
    cpp = a / "dnnlab" / "smoothmax" / "global_max.cpp"
    cpp.write_text(cpp.read_text() + "\n// another source\n")
    env = dict(os.environ, PYTHONPATH=str(a), PYTHONWARNINGS="ignore")
    name = subprocess.run([sys.executable, "-c", "from dnnlab.smoothmax import native; "
                           "print(native.NAME)"], cwd=a, env=env, capture_output=True,
                          text=True, timeout=300, check=True).stdout.strip()
    assert name.startswith("dnnlab_global_max_") and name != native.NAME
