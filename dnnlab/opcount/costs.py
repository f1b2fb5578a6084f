"""The pipeline's cost-model outputs: the roofline on a named device (`roofline=<device>`) and
predicted against measured time (`measure=true`), each as results.json entries, one line for
the terminal and PNGs in the run dir."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dnnlab.opcount.rows import OpReport


@dataclass
class CostOutputs:
    results: dict = field(default_factory=dict)  # results.json keys: roofline, measured
    lines: list = field(default_factory=list)  # for the terminal
    images: dict = field(default_factory=dict)  # W&B key -> PNG path


def cost_outputs(model: torch.nn.Module, report: OpReport, run_dir: Path, *, name: str,
                 device: str | None, measure: bool, input_shape: Any = None,
                 inputs: Any = None, min_run_time: float = 0.05) -> CostOutputs:
    """The roofline on `device` (None: none) and, with `measure`, every leaf module timed on
    this CPU against the calibrated `cpu` roofline."""
    from dnnlab.opcount.plots import plot_roofline
    from dnnlab.opcount.roofline import roofline

    out = CostOutputs()
    if device:
        roof = roofline(report, device)
        out.results["roofline"] = roof.summary()
        out.lines.append(f"roofline on {device}: {roof.seconds:.3e} s predicted, "
                         f"{out.results['roofline']['compute_bound']} ops compute-bound, "
                         f"{out.results['roofline']['memory_bound']} memory-bound")
        out.images["roofline"] = plot_roofline(roof, run_dir / "roofline.png",
                                               f"{name} on {device}")
    if measure:
        from dnnlab.opcount.build import materialize
        from dnnlab.opcount.measure import measure as measure_modules
        from dnnlab.opcount.measure import plot_measured

        real = materialize(model)  # real weights once, for the CPU and the GPU timing
        m = measure_modules(real, report, input_shape, inputs=inputs,
                            min_run_time=min_run_time)
        out.results["measured"] = m.to_dict()
        out.lines.append(f"measured on cpu: {len(m.rows)} layers, spearman {m.spearman}, "
                         f"median measured/predicted {m.median_ratio}")
        out.images["measured"] = plot_measured(m, run_dir / "measured.png", name)
        if torch.cuda.is_available():  # the same on the GPU, against the named device's roof
            from dnnlab.opcount.devices import DEVICES

            if device and device != "cpu" and device in DEVICES:
                g = measure_modules(real, report, input_shape, inputs=inputs,
                                    min_run_time=min_run_time, on="cuda", roof=device)
                out.results["measured_cuda"] = {**g.to_dict(), "device": device,
                                                "gpu": torch.cuda.get_device_name()}
                out.lines.append(f"measured on {torch.cuda.get_device_name()} against {device}:"
                                 f" spearman {g.spearman}, median measured/predicted "
                                 f"{g.median_ratio}")
                out.images["measured_cuda"] = plot_measured(g, run_dir / "measured_cuda.png",
                                                            f"{name} on {device}")
            else:
                out.lines.append("a GPU is present: give roofline=<its device> (a100-80gb, "
                                 "h100-sxm, h200, l4) to measure it against that roofline too")
    return out
