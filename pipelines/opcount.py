"""Count the multiplications and additions of a network (docs/math.md (2)), reconciled with fvcore.

    python -m pipelines.opcount model=alexnet
    python -m pipelines.opcount -m 'model=choice(alexnet,resnet18,vit_b_16)'
    python -m pipelines.opcount model=alexnet input_shape=[1,3,32,32]   # one-line error
    python -m pipelines.opcount model=timm model.name=deit_tiny_patch16_224 unit=FLOPs
    python -m pipelines.opcount model=resnet18 roofline=cpu measure=true   # the cost model
    python -m pipelines.opcount model=resnet50 'input_shape=[32,3,224,224]' memory=true \
        memory.optimizer=sgd memory.measure=true   # a training step's memory

Writes results.json, results.csv (one row per op), layers.csv, totals.csv, rollup.csv (to
`show_depth`), per_layer.png [roofline.png, measured.png, memory.png] into the run dir and to W&B.
The count runs in `prepare`: a config it refuses leaves no run dir and no W&B run.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig

from dnnlab.cli import console, launch, status
from dnnlab.config import register
from dnnlab.errors import ConfigError, DnnlabError
from dnnlab.models import build_model
from dnnlab.opcount.costs import cost_outputs, memory_guard, memory_outputs
from dnnlab.opcount.experiment import OpcountResult, OpcountSettings, run
from dnnlab.opcount.plots import plot_per_layer
from dnnlab.opcount.rollup import rollup_tree
from dnnlab.opcount.zoo import default_input_shape, make_inputs
from dnnlab.runtime import Run, run_job

register("opcount")


@dataclass
class Counted:
    settings: OpcountSettings
    result: OpcountResult
    model: Any = None  # the built model (meta), for measure
    shape: Any = None
    inputs: Any = None
    memory: Any = None  # the predicted MemoryReport (memory=true)


def prepare(settings: OpcountSettings, cfg: DictConfig, run_dir) -> Counted:
    """The whole count: a model that cannot take the input is refused before anything is
    written (no run dir, no W&B run)."""
    with status(f"counting {settings.name} ..."):
        model = build_model(settings.model["builder"], device="meta")
        shape, inputs = settings.input_shape, None
        if settings.inputs is not None:
            inputs = make_inputs(settings.inputs)
        elif shape is None:
            shape = default_input_shape(model)  # timm: its pretrained_cfg's input_size
            if shape is None:
                raise ConfigError("input_shape: none given and the model has no default "
                                  "(give input_shape=[...] or inputs)")
        result = run(model, shape, inputs=inputs, name=settings.name, count=settings.count,
                     training=settings.training, reconcile_counts=settings.reconcile,
                     unit=settings.unit, reconcile_max_gb=settings.reconcile_max_gb)
        memory = memory_guard(model, result.report, settings, shape, inputs)
    return Counted(settings, result, model, shape, inputs, memory)


def job(counted: Counted, run: Run) -> dict:
    settings, result, tr = counted.settings, counted.result, run.tracker
    run.results.update(**result.to_dict())
    result.report.to_csv(run.dir / "results.csv")
    saved = None if counted.memory is None else counted.memory.saved_by_module
    for table in [*result.tables(), result.rollup_table(settings.show_depth, saved)]:
        tr.table(table)
    console.print(rollup_tree(result.report.rollup(settings.show_depth), "per module"))
    console.print(result.per_layer_table().to_rich(max_rows=settings.show_rows))
    console.print(result.totals_table().to_rich())
    if result.flop_counter_line():
        console.print(result.flop_counter_line(), highlight=False)
    console.print(result.mode_line(), highlight=False)
    tr.image("per_layer", plot_per_layer(result, run.dir / "per_layer.png"))
    costs = cost_outputs(counted.model, result.report, run.dir, name=settings.name,
                         device=settings.roofline, measure=settings.measure,
                         input_shape=counted.shape, inputs=counted.inputs)
    run.results.update(**costs.results)
    for line in costs.lines:
        console.print(line, highlight=False, soft_wrap=True)
    mem = memory_outputs(counted.model, counted.memory, run.dir, name=settings.name,
                         settings=settings, input_shape=counted.shape, inputs=counted.inputs)
    run.results.update(**mem.results)
    for table in mem.tables:
        console.print(table.to_rich())
        tr.table(table)
    for line in mem.lines:
        console.print(line, highlight=False, soft_wrap=True)
    for key, png in {**costs.images, **mem.images}.items():
        tr.image(key, png)
    tr.summary(**result.summary())
    if counted.memory is not None:  # the predicted peak and its categories
        tr.summary(**{"memory/peak_bytes": counted.memory.peak_bytes,
                      **{f"memory/{k}": v for k, v in counted.memory.by_category.items()}})
    console.print(f"results: {run.results.path}", soft_wrap=True)
    bad = result.mismatches(strict=True)
    if settings.fail_on_mismatch and result.reconciled is False:
        raise DnnlabError(f"conv/linear counts differ from fvcore at {len(bad)} rows, first: "
                          f"{bad[0] if bad else result.totals()}")
    return run.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="opcount")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "opcount", job, prepare=prepare)


def quote_switches(argv: list, groups: tuple = ("memory",)) -> list:
    """`memory=true` selects conf/memory/true.yaml: Hydra's grammar reads a bare true/false as
    a bool, which a config group refuses, so the option is quoted ('true') before Hydra parses
    it (sweeps too: memory=true,false). `memory.optimizer=sgd` is an ordinary key."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in groups:
            value = re.sub(r"(?<![\w'\"])(true|false)(?![\w'\"])", r"'\1'", value,
                           flags=re.IGNORECASE)
            arg = f"{key}={value.lower()}"
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.argv[1:] = quote_switches(sys.argv[1:])
    launch("pipelines.opcount")
