"""One run at a time in a run dir: an exclusive lock on `<run dir>/.lock` (fcntl.flock), held for
the job's life. The kernel drops it when its process dies (kill -9 included), so a stale lock is
simply taken over. While held the file holds the pid, to name who holds it; released, it is
empty again, so a refused run leaves the dir as it found it."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dnnlab.core.errors import DnnlabError

FILE = ".lock"


class RunDirInUse(DnnlabError):
    """Another live process holds the run dir."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path, self.fd = Path(run_dir) / FILE, None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirInUse(f"run dir {self.path.parent} is in use by another run (pid {pid});"
                              " wait for it, or give another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:  # the file stays: unlinking it would let two runs lock two files
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None
