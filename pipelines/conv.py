"""Check the chain's gradients (docs/math.md (3a), (3b)) several ways, and measure what they cost.

    python -m pipelines.conv
    python -m pipelines.conv chain=deep dtype=float32
    python -m pipelines.conv -m chain.activation=sigmoid,tanh,relu      # one W&B group

The stages, settings and outputs are dnnlab.conv.experiment's (docs/conv.md): results.json
(rewritten after each stage), comparisons.csv, real_nets.csv, scaling.csv and scaling.png in the
run dir, and the same to W&B.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnnlab.conv.experiment import ConvResult, ConvSettings, check_real_nets
from dnnlab.conv.experiment import run as run_conv
from dnnlab.core.outputs import Outputs, Prepared
from dnnlab.run.cli import launch, status
from dnnlab.run.config import register
from dnnlab.run.runtime import Context, Run, run_job

register("conv", ConvSettings)


def prepare(settings: ConvSettings, context: Context) -> Prepared:
    """A real network that cannot take its input shape is refused before anything is written."""
    check_real_nets(settings)
    return Prepared(settings)


def job(prepared: Prepared, run: Run) -> Outputs:
    settings, tr, logged = prepared.settings, run.tracker, {"rows": 0}
    tr.define_metric("scaling/n")  # the scaling timings are charted against n
    for key in ("scaling/conv_s", "scaling/matrix_s"):
        tr.define_metric(key, step_metric="scaling/n")

    def progress(partial: ConvResult) -> None:
        run.results.update(**partial.to_dict())
        rows = (partial.scaling or {}).get("rows", [])
        for row in rows[logged["rows"]:]:  # the scaling rows as they come
            tr.log({"scaling/n": row["n"], "scaling/conv_s": row["conv_s"],
                    **({} if row["matrix_skipped"] else {"scaling/matrix_s": row["matrix_s"]})})
        logged["rows"] = len(rows)

    with status("conv: the chain, gradcheck, real networks, scaling ..."):
        result = run_conv(settings, on_progress=progress)
    return result.outputs(run.dir, settings.fail_on_mismatch)


@hydra.main(version_base="1.3", config_path="../conf", config_name="conv")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "conv", job, prepare=prepare)


if __name__ == "__main__":
    launch("pipelines.conv")
