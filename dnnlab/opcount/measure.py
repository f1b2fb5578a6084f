"""Predicted against measured time (`measure=true`, docs/opcount.md "Measure").

Every leaf module (no children) that runs a counted op is timed on real CPU tensors (or on the
GPU, against a named GPU's datasheet roofline, when one is present): the model
is run once on random inputs (zero weights for a model built on meta) with forward hooks that
keep each leaf's inputs, then each leaf is called again on its own inputs under
`torch.utils.benchmark` (warm-up, then the median of blocked repeats), times the number of
calls it had in the forward. Its prediction is the `cpu` roofline of its rows
(`roofline.by_module`). `spearman` is the rank correlation of the two per-layer columns
(scipy.stats.spearmanr), `median_ratio` the median of measured / predicted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

import torch

from dnnlab.opcount.counter import as_inputs, call_args, swapped
from dnnlab.opcount.rows import OpReport


@dataclass
class Measured:
    rows: list = field(default_factory=list)  # [{path, type, calls, predicted_s, measured_s}]
    spearman: float | None = None
    median_ratio: float | None = None

    def to_dict(self) -> dict:
        return {"rows": self.rows, "spearman": self.spearman,
                "median_ratio": self.median_ratio,
                "predicted_s": sum(r["predicted_s"] for r in self.rows),
                "measured_s": sum(r["measured_s"] for r in self.rows)}


def _random(t: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(t) if t.is_floating_point() else t


def _leaf_inputs(model: torch.nn.Module, paths: set, args: tuple, kwargs: dict) -> dict:
    """{path: [module, args, kwargs, calls]} for the leaves in `paths`, from one real run."""
    from dnnlab.opcount.counter import _map

    seen: dict = {}
    handles = []
    for path, m in model.named_modules():
        if path in paths and not any(True for _ in m.children()):
            def hook(mod, a, k, path=path):
                if path in seen:
                    seen[path][3] += 1
                else:
                    seen[path] = [mod, tuple(t.clone() if isinstance(t, torch.Tensor) else t
                                             for t in a), dict(k), 1]
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*_map(args, _random), **_map(kwargs, _random))
    finally:
        for h in handles:
            h.remove()
    return seen


def measure(model: torch.nn.Module, report: OpReport, input_shape=None, *, inputs=None,
            min_run_time: float = 0.05, threads: int | None = None,
            on: str = "cpu", roof: str | None = None) -> Measured:
    """Time every leaf module that runs a counted op against its roofline prediction: on this
    CPU against the calibrated `cpu` roofline, or (`on="cuda"`) on the GPU against the named
    device `roof` of devices.DEVICES (the Timer synchronizes CUDA)."""
    import copy

    from scipy.stats import spearmanr

    from dnnlab.core.timing import quiet_benchmark
    from dnnlab.opcount.counter import _map
    from dnnlab.opcount.devices import calibrate
    from dnnlab.opcount.roofline import roofline

    benchmark = quiet_benchmark()

    threads = int(threads or torch.get_num_threads())
    predicted = roofline(report, calibrate(threads) if on == "cpu" else roof).by_module()
    args, kwargs = as_inputs(*call_args(input_shape, inputs), meta=False)
    out = Measured()
    with swapped(model, meta=False, training=report.training, copy=False) as m:
        if on != "cpu":  # a copy on the GPU, its inputs too
            m = copy.deepcopy(m).to(on)
            args, kwargs = (_map(args, lambda t: t.to(on)), _map(kwargs, lambda t: t.to(on)))
        leaves = _leaf_inputs(m, {p for p, s in predicted.items() if s > 0}, args, kwargs)
        with torch.no_grad():
            for path, (mod, a, k, calls) in leaves.items():
                timer = benchmark.Timer("mod(*a, **k)", globals={"mod": mod, "a": a, "k": k},
                                        num_threads=threads)
                timer.timeit(3)  # warm-up
                t = timer.blocked_autorange(min_run_time=min_run_time).median * calls
                out.rows.append({"path": path, "type": type(mod).__name__, "calls": calls,
                                 "predicted_s": predicted[path], "measured_s": t})
    if len(out.rows) >= 3:
        pred = [r["predicted_s"] for r in out.rows]
        meas = [r["measured_s"] for r in out.rows]
        out.spearman = float(spearmanr(pred, meas).statistic)
        out.median_ratio = float(median(b / a for a, b in zip(pred, meas)))
    return out


def plot_measured(measured: Measured, path, title: str):
    """Log-log: predicted against measured seconds per leaf module, with the diagonal."""
    from dnnlab.core.plots import plt, save

    fig, ax = plt.subplots(figsize=(6, 5))
    pred = [r["predicted_s"] for r in measured.rows]
    meas = [r["measured_s"] for r in measured.rows]
    ax.scatter(pred, meas, s=12)
    if pred:
        lo, hi = min(pred + meas), max(pred + meas)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted s (roofline)")
    ax.set_ylabel("measured s (median)")
    ax.set_title(f"{title}: spearman {measured.spearman:.3f}" if measured.spearman is not None
                 else title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, path)
