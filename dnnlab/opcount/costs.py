"""The pipeline's cost-model outputs: the roofline on a named device (`roofline=<device>`),
predicted against measured time (`measure=true`) and a training step's memory (`memory=true`),
each as results.json entries, lines and tables for the terminal and PNGs in the run dir; and
the guard that refuses a measurement whose predicted peak is over `memory.measure_max_gb`."""
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
    tables: list = field(default_factory=list)  # dnnlab.core.table.Table for the terminal and W&B


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


def measure_peak_bytes(model: torch.nn.Module, report: OpReport, input_shape: Any = None,
                       inputs: Any = None) -> int:
    """What `measure=true`'s timing holds at most: the weights and every leaf's input it keeps
    (memory.real_run_bytes), or the forward's predicted peak if that is more."""
    from dnnlab.opcount.memory import real_run_bytes
    from dnnlab.opcount.memory_predict import memory_of

    need = real_run_bytes(report)
    try:
        need = max(need, memory_of(model, input_shape, inputs=inputs, train=False).peak_bytes)
    except Exception:  # noqa: BLE001 - an op fake tensors cannot run: the count's bound stands
        pass
    return need


def memory_guard(model: torch.nn.Module, report: OpReport, settings, input_shape: Any = None,
                 inputs: Any = None):
    """The memory prediction (settings: OpcountSettings) when `memory` is on, and the refusal,
    in one line, of a measurement (memory.measure, measure) whose predicted peak is over
    memory.measure_max_gb. Returns the MemoryReport or None."""
    from dnnlab.core.errors import ConfigError, DnnlabError, first_line
    from dnnlab.opcount.memory import GB
    from dnnlab.opcount.memory_predict import memory_of

    mem, pred = settings.memory, None
    if mem.enabled or mem.measure:
        try:
            pred = memory_of(model, input_shape, inputs=inputs, train=mem.train,
                             optimizer=mem.optimizer, precision=mem.precision,
                             kv_context=mem.kv_context)
        except DnnlabError:
            raise
        except Exception as err:  # noqa: BLE001 - one line naming what failed
            raise DnnlabError(f"memory: {type(model).__name__} could not run on fake tensors: "
                              f"{first_line(err)}") from None
        if mem.measure and pred.peak_bytes > mem.measure_max_gb * GB:
            raise ConfigError(f"memory.measure=true refused: the step's predicted peak is "
                              f"{pred.peak_bytes / GB:,.1f} GB, above memory.measure_max_gb="
                              f"{mem.measure_max_gb:g}")
    if settings.measure:
        need = measure_peak_bytes(model, report, input_shape, inputs)
        if need > mem.measure_max_gb * GB:
            raise ConfigError(f"measure=true refused: timing on real CPU tensors would hold "
                              f"about {need / GB:,.1f} GB, above memory.measure_max_gb="
                              f"{mem.measure_max_gb:g}")
    return pred


def memory_outputs(model: torch.nn.Module, pred, run_dir: Path, *, name: str, settings,
                   input_shape: Any = None, inputs: Any = None) -> CostOutputs:
    """results.json `memory` ({predicted, measured}), the tables, memory.png."""
    from dnnlab.opcount.memory_measure import measure_memory
    from dnnlab.opcount.memory_report import MB, plot_memory

    out = CostOutputs()
    if pred is None:
        return out
    mem, measured = settings.memory, None
    if mem.measure:
        measured = measure_memory(model, input_shape, inputs=inputs, train=mem.train,
                                  optimizer=mem.optimizer, precision=mem.precision)
    out.results["memory"] = {"predicted": pred.to_dict(),
                             "measured": None if measured is None else measured.to_dict()}
    out.tables = [pred.category_table(measured), pred.module_table()]
    where = pred.peak_at
    line = (f"memory: predicted peak {pred.peak_bytes / MB:,.1f} MB in the "
            f"{where.get('phase')} ({where.get('op')} in {where.get('module') or '<model>'})")
    if measured is not None:
        line += (f"; measured {measured.peak_bytes / MB:,.1f} MB live tensors "
                 f"({pred.peak_bytes / measured.peak_bytes - 1:+.2%}), RSS growth "
                 f"{measured.measured['rss_growth_bytes'] / MB:,.1f} MB against "
                 f"{pred.process_growth_bytes / MB:,.1f} MB predicted"
                 + (f" (with {pred.scratch_bytes / MB:,.1f} MB of scratch inside a kernel, no "
                    f"tensor)" if pred.scratch_bytes else ""))
    if pred.kv_cache_bytes is not None:
        line += f"; KV cache at {pred.kv_context} tokens: {pred.kv_cache_bytes / MB:,.1f} MB"
    out.lines.append(line)
    out.lines.extend(f"memory prediction {c}" for c in pred.caveats)
    out.images["memory"] = plot_memory(
        pred, run_dir / "memory.png", f"{name}: live tensors per op ({pred.optimizer}, "
        f"precision {pred.precision})", None if measured is None else measured.peak_bytes)
    return out
