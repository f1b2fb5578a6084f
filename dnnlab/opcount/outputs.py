"""The op count's outputs (dnnlab.core.outputs): what results.json, W&B, the run dir and the
terminal get from one count and its cost model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dnnlab.core.outputs import Outputs
from dnnlab.opcount.experiment import OpcountResult
from dnnlab.opcount.plots import plot_per_layer
from dnnlab.opcount.rollup import rollup_tree


def outputs(result: OpcountResult, costs: Any, settings: Any, out_dir: Path, mem: Any = None,
            memory: Any = None) -> Outputs:
    """`costs` and `mem` are dnnlab.opcount.costs.cost_outputs's and memory_outputs's; `memory`
    the predicted MemoryReport (memory=true) or None; `settings` an OpcountSettings (its
    show_depth, show_rows, fail_on_mismatch). The per-layer plot is drawn into `out_dir`."""
    mem_results, mem_tables, mem_images, mem_lines = (
        (mem.results, mem.tables, mem.images, mem.lines) if mem is not None else ({}, [], {}, []))
    summary = result.summary()
    if memory is not None:  # the predicted peak and its categories
        summary.update({"memory/peak_bytes": memory.peak_bytes,
                        **{f"memory/{k}": v for k, v in memory.by_category.items()}})
    saved = None if memory is None else memory.saved_by_module
    bad = result.mismatches(strict=True)
    failure = None
    if settings.fail_on_mismatch and result.reconciled is False:
        failure = (f"conv/linear counts differ from fvcore at {len(bad)} rows, first: "
                   f"{bad[0] if bad else result.totals()}")
    return Outputs(
        {**result.to_dict(), **costs.results, **mem_results},
        [*result.tables(), result.rollup_table(settings.show_depth, saved), *mem_tables],
        {"per_layer": plot_per_layer(result, Path(out_dir) / "per_layer.png"), **costs.images,
         **mem_images},
        summary=summary,
        show=[rollup_tree(result.report.rollup(settings.show_depth), "per module"),
              result.per_layer_table().to_rich(max_rows=settings.show_rows),
              result.totals_table(), *filter(None, [result.flop_counter_line()]),
              result.mode_line(), *costs.lines, *mem_tables, *mem_lines],
        failure=failure)
