"""Where a measured step's resident set goes, op by op: the live tensor bytes the tracker sees,
how many of their pages are resident (mincore(2) over every live storage), VmRSS and the peak
VmHWM growth since the step began. It says whether a gap between the predicted growth and the
RSS growth of benchmarks/opcount_memory.py is pages allocated and not yet written (the tensors
are right, the RSS is a lower bound) or memory that is no tensor (scratch inside a kernel).

    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/opcount_memory_pages.py             # LSTM b32
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/opcount_memory_pages.py --net resnet18

Linux only (mincore, /proc/self/status). Run with the mmap threshold fixed, as the benchmark
runs its rows. Prints the ops where the live bytes or the RSS change, and a summary at the
live peak; exits 0.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opcount_memory import build  # noqa: E402

from dnnlab.opcount import memory_measure as mm  # noqa: E402
from dnnlab.opcount.memory_predict import memory_of  # noqa: E402
from dnnlab.opcount.memory_track import StepTracker  # noqa: E402

MB = 2 ** 20
PAGE = 4096
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def resident_bytes(ptr: int, n: int) -> int:
    """Bytes of the pages spanning [ptr, ptr + n) that are resident (whole pages)."""
    if n <= 0:
        return 0
    a, b = ptr // PAGE * PAGE, -(-(ptr + n) // PAGE) * PAGE
    vec = (ctypes.c_ubyte * ((b - a) // PAGE))()
    if _libc.mincore(ctypes.c_void_p(a), ctypes.c_size_t(b - a), vec) != 0:
        return 0
    return sum(v & 1 for v in vec) * PAGE


class PageTracker(StepTracker):
    """StepTracker that, when `on`, records after each op: (phase, op, live bytes, resident
    bytes of the live storages, VmRSS, VmHWM)."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.rows: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        res = super().__torch_dispatch__(func, types, args, kwargs)
        if self.on:
            spans = []
            for st in list(self._WINFO.keys()):
                spans.append((st.data_ptr(), st.nbytes()))
            self.rows.append((self.phase, func.overloadpacket.__name__,
                              sum(n for _, n in spans),
                              sum(resident_bytes(p, n) for p, n in spans),
                              mm.rss_bytes(), mm.peak_rss_bytes()))
        return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="lstm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--optimizer", default="sgd")
    a = ap.parse_args()
    trackers: list[PageTracker] = []

    def make() -> PageTracker:
        t = PageTracker()
        t.on = len(trackers) == 1  # the second: the measured step (the first is the warm-up)
        trackers.append(t)
        return t

    mm.StepTracker = make
    model, shape, inputs = build(a.net, a.batch)
    pred = memory_of(model, shape, inputs=inputs, optimizer=a.optimizer)
    meas = mm.measure_memory(model, shape, inputs=inputs, optimizer=a.optimizer)
    rows, rss0 = trackers[1].rows, meas.measured["rss_start_bytes"]
    print(f"{a.net} batch {a.batch} {a.optimizer}: predicted growth {pred.growth_bytes / MB:,.1f}"
          f" MB, RSS growth {meas.measured['rss_growth_bytes'] / MB:,.1f} MB")
    print(f"{'phase':<10}{'op':<28}{'live MB':>9}{'resident':>9}{'unwritten':>10}"
          f"{'VmRSS+':>9}{'VmHWM+':>9}")
    last = None
    for ph, op, live, res, rss, hwm in rows:
        key = (round(live / MB), round(rss / MB), round(hwm / MB))
        if key != last:
            print(f"{ph:<10}{op:<28}{live / MB:>9,.1f}{res / MB:>9,.1f}{(live - res) / MB:>10,.1f}"
                  f"{(rss - rss0) / MB:>9,.1f}{(hwm - rss0) / MB:>9,.1f}")
        last = key
    i = max(range(len(rows)), key=lambda k: rows[k][2])
    ph, op, live, res, rss, hwm = rows[i]
    unwritten = (live - res) - (rows[0][2] - rows[0][3])
    print(f"at the live peak ({ph}, aten.{op}): live tensors grew {(live - rows[0][2]) / MB:,.1f}"
          f" MB, {unwritten / MB:,.1f} MB of it not written yet; resident part grew "
          f"{(res - rows[0][3]) / MB:,.1f} MB; VmRSS after the op grew {(rss - rss0) / MB:,.1f}"
          f" MB; VmHWM over the step {(max(r[5] for r in rows) - rss0) / MB:,.1f} MB "
          "(above VmRSS: memory freed inside an op, no tensor)")


if __name__ == "__main__":
    main()
