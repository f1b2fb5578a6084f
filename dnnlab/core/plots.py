"""Matplotlib, headless (Agg): every figure is saved as PNG in the run dir. Each topic's figures
live in dnnlab/<topic>/plots.py and end with `save(fig, path)`."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
