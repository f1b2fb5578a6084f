"""Fail when a library module has less than N% line coverage in the last `coverage run`.

    python tests/coverage_floor.py 60      # after `coverage run -m pytest -m "not slow"`
"""
from __future__ import annotations

import sys
from pathlib import Path

from coverage import Coverage

ROOT = Path(__file__).resolve().parents[1]


def main(floor: float) -> int:
    cov = Coverage()
    cov.load()
    low = []
    for path in sorted(str(p) for p in (ROOT / "dnnlab").rglob("*.py")):  # imported or not
        _, statements, _, missing, _ = cov.analysis2(path)
        if statements:
            pct = 100 * (len(statements) - len(missing)) / len(statements)
            if pct < floor:
                low.append((pct, path.split("/dnnlab/", 1)[1]))
    for pct, name in low:
        print(f"coverage: dnnlab/{name} {pct:.0f}% < {floor:g}%")
    print(f"coverage floor {floor:g}%: {'FAILED' if low else 'every library module passes'}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0))
