"""Count the multiplications and additions of a network (docs/math.md (2)), reconciled with fvcore.

    python -m pipelines.opcount model=alexnet
    python -m pipelines.opcount model=timm model.name=deit_tiny_patch16_224 unit=FLOPs
    python -m pipelines.opcount model=resnet18 roofline=cpu measure=true   # the cost model
    python -m pipelines.opcount model=resnet50 'input_shape=[32,3,224,224]' memory=true \
        memory.optimizer=sgd memory.measure=true   # a training step's memory

Outputs: docs/opcount.md. The count runs in `prepare`: a config it refuses leaves no run dir.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnnlab.core.outputs import Outputs, Prepared
from dnnlab.opcount.costs import cost_outputs, memory_guard, memory_outputs
from dnnlab.opcount.experiment import OpcountSettings, run
from dnnlab.opcount.outputs import outputs
from dnnlab.opcount.zoo import model_inputs
from dnnlab.run.cli import launch, status
from dnnlab.run.config import register
from dnnlab.run.models import build_model
from dnnlab.run.runtime import Context, Run, run_job

register("opcount", OpcountSettings)


def prepare(settings: OpcountSettings, context: Context) -> Prepared:
    """The whole count, so that a model that cannot take its input is refused before anything
    is written. Built: the result, the model (meta), its input shape and inputs."""
    with status(f"counting {settings.name} ..."):
        model = build_model(settings.model["builder"], device="meta")
        shape, inputs = model_inputs(model, settings.input_shape, settings.inputs)
        result = run(model, shape, inputs=inputs, name=settings.name, count=settings.count,
                     training=settings.training, reconcile_counts=settings.reconcile,
                     unit=settings.unit, reconcile_max_gb=settings.reconcile_max_gb)
        memory = memory_guard(model, result.report, settings, shape, inputs)  # memory=true
    return Prepared(settings, (result, model, shape, inputs, memory))


def job(prepared: Prepared, run: Run) -> Outputs:
    s, (result, model, shape, inputs, memory) = prepared.settings, prepared.built
    run.results.update(**result.to_dict())  # kept if the cost model fails
    result.report.to_csv(run.dir / "results.csv")
    costs = cost_outputs(model, result.report, run.dir, name=s.name, device=s.roofline,
                         measure=s.measure, input_shape=shape, inputs=inputs)
    mem = memory_outputs(model, memory, run.dir, name=s.name, settings=s, input_shape=shape,
                         inputs=inputs)
    return outputs(result, costs, s, run.dir, mem, memory)


@hydra.main(version_base="1.3", config_path="../conf", config_name="opcount")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "opcount", job, prepare=prepare)


if __name__ == "__main__":
    launch("pipelines.opcount", switches=("memory",))
