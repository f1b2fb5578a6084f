"""The C++ kernel of global max pooling with shared ties (global_max.cpp), built once.

`kernels()` returns the built module (`forward`, `backward`), or None when it cannot be built or
is switched off; the pooling then runs its pure-torch path (kernels._GlobalMax), which gives the
same values bit for bit (tests/smoothmax/test_kernels.py runs both). `make setup` builds it
(`main()`: build it and say where it is, or why not), so that a run does not stop for the
compiler; a run that finds no build makes it once, under a file lock.

Build directory: $DNNLAB_NATIVE_DIR, else torch's extensions root (~/.cache/torch_extensions,
or $TORCH_EXTENSIONS_DIR) /dnnlab/<NAME>. NAME carries a hash of what the build depends on
(the source, the compiler flags, torch's and Python's versions), so every checkout and venv of
a machine with the same source and torch shares one build, and a changed source or torch gets a
new one. The source is copied into the build dir and compiled from there, so build.ninja holds
no checkout's path (torch's `load` rebuilds whenever build.ninja differs: two checkouts sharing
a build dir would take turns recompiling). A build that exists is imported directly, without
running ninja: a run never recompiles. Switched off by DNNLAB_NATIVE=0 or `set_enabled(False)`.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("global_max.cpp")
FLAGS = ["-O3"]


def _key() -> str:
    """A hash of what a build depends on: source, flags, compiler, torch, Python."""
    h = hashlib.sha256(SOURCE.read_bytes())
    for part in (*FLAGS, os.environ.get("CXX", "c++"), torch.__version__,
                 f"{sys.version_info.major}.{sys.version_info.minor}", sys.platform):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


# a build serves one source, torch and Python (dnnlab_global_max_py311_<hash>)
NAME = f"dnnlab_global_max_py{sys.version_info.major}{sys.version_info.minor}_{_key()}"

# The global pooling takes the kernel for inputs of at most this many entries: beyond it torch's
# vectorized, multi-threaded ops beat the kernel's 16-byte lanes (benchmarks/smooth_max.py).
MAX_ENTRIES = 1 << 17

_enabled = os.environ.get("DNNLAB_NATIVE", "1") != "0"


def set_enabled(on: bool) -> None:
    """Use the C++ kernel (True, when it builds) or the pure-torch path (False)."""
    global _enabled
    _enabled = bool(on)


def build_directory() -> Path:
    root = os.environ.get("DNNLAB_NATIVE_DIR")
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root
        root = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root(),
                            "dnnlab")
    return Path(root) / NAME


def kernels():
    """The built module (`forward`, `backward`), or None: switched off, or it cannot be built
    here (a warning, once, says why)."""
    return _load() if _enabled else None


@functools.cache
def _load():
    try:
        return _build()
    except Exception as e:  # no compiler, no ninja, an unwritable directory, a compile error
        warnings.warn(f"dnnlab: the C++ max-pooling kernel is unavailable ({build_error(e)}); "
                      "using the pure-torch path (same values, slower)", RuntimeWarning,
                      stacklevel=3)
        return None


def build_error(e: Exception) -> str:
    """One line of why: a failed compile's first compiler line that says error (the exception
    starts with the whole command line), else the exception's first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines[1:] if "error" in ln.lower() or "not found" in ln.lower()]
    line = (said or lines or [type(e).__name__])[0]
    return line if len(line) <= 300 else line[:297] + "..."


def _build():
    # torch.utils.cpp_extension logs "No CUDA runtime is found" on import on a CPU machine, and
    # a wall of text about an unexpected compiler: a failure is reported by _load, in one line
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        return _compile()
    finally:
        cpp_log.setLevel(level)


def built() -> Path | None:
    """The built module's file in the build directory, or None when there is none yet."""
    so = build_directory() / f"{NAME}.so"
    return so if so.is_file() else None


def _import(so: Path):
    """Import a built extension module from its file (no ninja, no compiler)."""
    spec = importlib.util.spec_from_file_location(NAME, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile():
    so = built()
    if so is not None:
        return _import(so)
    build = build_directory()
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "build.lock", "w") as lock:  # one build at a time; the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        so = built()
        if so is not None:  # another process built it meanwhile
            return _import(so)
        from torch.utils.cpp_extension import load
        bindir = os.path.dirname(sys.executable)  # the venv's ninja (pip package)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        print(f"dnnlab: compiling the C++ max-pooling kernel into {build} (once for this "
              "source and torch; about a minute)", file=sys.stderr, flush=True)
        source = build / SOURCE.name  # the same path in build.ninja for every checkout
        shutil.copyfile(SOURCE, source)
        return load(NAME, [str(source)], extra_cflags=FLAGS, build_directory=str(build),
                    verbose=False)


def main() -> int:
    """Build (or load) the kernel and print where it is; 1 when it is unavailable."""
    t0 = time.perf_counter()
    if not _enabled:
        print("dnnlab: the C++ max-pooling kernel is switched off (DNNLAB_NATIVE=0)")
        return 1
    if kernels() is None:
        return 1
    print(f"dnnlab: C++ max-pooling kernel ready in {build_directory()} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0
