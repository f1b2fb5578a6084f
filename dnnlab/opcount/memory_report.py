"""The report of a training step's memory (`memory_of` predicts it, `measure_memory` measures
it): the peak, its five categories, where it occurs, the bytes each module saves for backward,
the timeline of live bytes; its results.json entry, its tables and memory.png."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dnnlab.core.table import Table
from dnnlab.opcount.memory_track import CATEGORIES

MB = 2 ** 20


@dataclass
class MemoryReport:
    """Bytes of live tensors in one step. `peak_bytes` is the most at once; `by_category`
    splits it into parameters (and buffers), gradients, optimizer states, activations (every
    tensor made in the forward, the input included) and temporaries (made in the backward or
    the optimizer step, gradients excepted); `peak_at` says where: {phase, op, module, index}."""

    peak_bytes: int
    by_category: dict
    peak_at: dict
    start_bytes: int  # live when the step starts (parameters, optimizer states, the input)
    end_by_category: dict = field(default_factory=dict)  # live when the step ends
    saved_by_module: dict = field(default_factory=dict)  # module path -> bytes saved for bwd
    timeline: list = field(default_factory=list)  # (phase, op, module, live bytes) per op
    train: bool = True
    optimizer: str | None = "adam"
    precision: str = "32"
    kv_cache_bytes: int | None = None  # an HF causal LM's cache at `kv_context` tokens
    kv_context: int | None = None
    measured: dict = field(default_factory=dict)  # measure_memory: rss_growth_bytes, cuda ...
    caveats: list = field(default_factory=list)  # why a prediction is known to be off
    # predicted: live tensors plus the scratch a kernel holds inside a call, no tensor (oneDNN's
    # LSTM backward, docs/math.md (4b)), at their most: what the process needs; None measured
    process_peak_bytes: int | None = None
    scratch_bytes: int = 0  # that scratch, at that point

    @property
    def growth_bytes(self) -> int:
        """Peak minus what was live at the start: what the step itself adds."""
        return self.peak_bytes - self.start_bytes

    @property
    def process_growth_bytes(self) -> int | None:
        """The process peak minus what was live at the start (predicted reports): what the
        step adds to the process's memory, the RSS growth's counterpart."""
        if self.process_peak_bytes is None:
            return None
        return self.process_peak_bytes - self.start_bytes

    def to_dict(self, timeline: bool = False) -> dict:
        out = {"peak_bytes": self.peak_bytes, "by_category": dict(self.by_category),
               "peak_at": dict(self.peak_at), "start_bytes": self.start_bytes,
               "growth_bytes": self.growth_bytes, "end_by_category": dict(self.end_by_category),
               "train": self.train,
               "optimizer": self.optimizer, "precision": self.precision,
               "saved_by_module": dict(self.saved_by_module),
               "kv_cache_bytes": self.kv_cache_bytes, "kv_context": self.kv_context,
               "caveats": list(self.caveats), **self.measured}
        if self.process_peak_bytes is not None:
            out |= {"process_peak_bytes": self.process_peak_bytes,
                    "process_growth_bytes": self.process_growth_bytes,
                    "scratch_bytes": self.scratch_bytes}
        if timeline:
            out["timeline"] = [list(t) for t in self.timeline]
        return out

    def category_table(self, measured: MemoryReport | None = None) -> Table:
        """MB per category at the peak (and measured beside it)."""
        rows = []
        for c in [*CATEGORIES, "total"]:
            p = self.peak_bytes if c == "total" else self.by_category[c]
            row = [c, p / MB]
            if measured is not None:
                m = measured.peak_bytes if c == "total" else measured.by_category[c]
                row += [m / MB, (p / m - 1) if m else None]
            rows.append(row)
        cols = ["category", "predicted MB"] + (["measured MB", "error"] if measured else [])
        where = self.peak_at
        return Table("memory", cols, rows,
                     title=(f"memory at the peak ({where.get('phase')}, {where.get('op')} in "
                            f"{where.get('module') or '<model>'}); optimizer {self.optimizer}, "
                            f"precision {self.precision}"),
                     formats={"predicted MB": "{:,.1f}", "measured MB": "{:,.1f}",
                              "error": "{:+.2%}"})

    def module_table(self, top: int = 10) -> Table:
        """The modules that save the most for backward."""
        rows = [[p or "<model>", n / MB] for p, n in list(self.saved_by_module.items())[:top]]
        return Table("memory_modules", ["module", "saved for backward MB"], rows,
                     title=f"top {top} modules by bytes saved for backward",
                     formats={"saved for backward MB": "{:,.2f}"})


def plot_memory(report: MemoryReport, path: Path, title: str,
                measured_peak: int | None = None) -> Path:
    """memory.png: `memory_figure` saved at `path`."""
    from dnnlab.core.plots import save

    return save(memory_figure(report, title, measured_peak), path)


def memory_figure(report: MemoryReport, title: str, measured_peak: int | None = None):
    """Live MB after each op, the phases shaded, the peak marked; the measured peak (when
    given) as a horizontal line."""
    from dnnlab.core.plots import plt

    fig, ax = plt.subplots(figsize=(8, 4))
    y = [t[3] / MB for t in report.timeline]
    ax.plot(range(len(y)), y, lw=1, color="tab:blue", label="predicted live tensors")
    colors = {"forward": "tab:green", "backward": "tab:orange", "optimizer": "tab:purple"}
    start = 0
    for i in range(1, len(y) + 1):
        if i == len(y) or report.timeline[i][0] != report.timeline[start][0]:
            ph = report.timeline[start][0]
            ax.axvspan(start, i - 1, color=colors.get(ph, "grey"), alpha=0.08)
            start = i
    if y:
        k = report.peak_at.get("index", max(range(len(y)), key=y.__getitem__))
        ax.plot([k], [y[k]], "rv", label=f"predicted peak {report.peak_bytes / MB:,.1f} MB")
    if measured_peak is not None:
        ax.axhline(measured_peak / MB, color="k", ls="--", lw=1,
                   label=f"measured peak {measured_peak / MB:,.1f} MB")
    ax.set_xlabel("op (forward, backward, optimizer step)")
    ax.set_ylabel("live tensor MB")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def saved_rollup(saved_by_module: dict, paths: list) -> dict:
    """Bytes saved for backward per module subtree, for each of `paths` (a module's own and
    its descendants'; '' is the model)."""
    out = dict.fromkeys(paths, 0)
    for path, n in saved_by_module.items():
        parts = path.split(".") if path else []
        for i in range(len(parts) + 1):
            a = ".".join(parts[:i])
            if a in out:
                out[a] += n
    return out
