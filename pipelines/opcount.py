"""Count the multiplications and additions of a network (docs/math.md (2)), reconciled with fvcore.

    python -m pipelines.opcount model=alexnet
    python -m pipelines.opcount -m 'model=choice(alexnet,resnet18,vit_b_16)'
    python -m pipelines.opcount model=alexnet input_shape=[1,3,32,32]   # one-line error
    python -m pipelines.opcount model=timm model.name=deit_tiny_patch16_224 unit=FLOPs
    python -m pipelines.opcount model=resnet18 roofline=cpu measure=true   # the cost model

Writes results.json, results.csv (one row per op), layers.csv, totals.csv, rollup.csv (to
`show_depth`), per_layer.png [roofline.png, measured.png] into the run dir and to W&B.
The count runs in `prepare`: a config it refuses leaves no run dir and no W&B run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig

from dnnlab.core.errors import ConfigError, DnnlabError
from dnnlab.opcount.costs import cost_outputs
from dnnlab.opcount.experiment import OpcountResult, OpcountSettings, run
from dnnlab.opcount.plots import plot_per_layer
from dnnlab.opcount.rollup import rollup_tree
from dnnlab.opcount.zoo import default_input_shape, make_inputs
from dnnlab.run.cli import console, launch, status
from dnnlab.run.config import register
from dnnlab.run.models import build_model
from dnnlab.run.runtime import Run, run_job

register("opcount", OpcountSettings)


@dataclass
class Counted:
    settings: OpcountSettings
    result: OpcountResult
    model: Any = None  # the built model (meta), for measure
    shape: Any = None
    inputs: Any = None


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
    return Counted(settings, result, model, shape, inputs)


def job(counted: Counted, run: Run) -> dict:
    settings, result, tr = counted.settings, counted.result, run.tracker
    run.results.update(**result.to_dict())
    result.report.to_csv(run.dir / "results.csv")
    for table in [*result.tables(), result.rollup_table(settings.show_depth)]:
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
    for key, png in costs.images.items():
        tr.image(key, png)
    tr.summary(**result.summary())
    console.print(f"results: {run.results.path}", soft_wrap=True)
    bad = result.mismatches(strict=True)
    if settings.fail_on_mismatch and result.reconciled is False:
        raise DnnlabError(f"conv/linear counts differ from fvcore at {len(bad)} rows, first: "
                          f"{bad[0] if bad else result.totals()}")
    return run.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="opcount")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "opcount", job, prepare=prepare)


if __name__ == "__main__":
    launch("pipelines.opcount")
