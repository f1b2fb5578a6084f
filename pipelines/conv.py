"""Check the chain's gradients (docs/math.md (4a), (4b)) several ways, and measure what they cost.

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
from dnnlab.conv.plots import plot_scaling
from dnnlab.core.errors import DnnlabError
from dnnlab.run.cli import console, launch, status
from dnnlab.run.config import register
from dnnlab.run.runtime import Run, run_job

register("conv", ConvSettings)


def prepare(settings: ConvSettings, cfg: DictConfig, run_dir) -> ConvSettings:
    """A real network that cannot take its input shape is refused before anything is written."""
    check_real_nets(settings)
    return settings


def job(settings: ConvSettings, run: Run) -> dict:
    tr, logged = run.tracker, {"rows": 0}
    tr.define_metric("scaling/n")  # the scaling timings are charted against n
    for key in ("scaling/conv_s", "scaling/matrix_s"):
        tr.define_metric(key, step_metric="scaling/n")

    def progress(partial: ConvResult) -> None:
        run.results.update(**partial.to_dict())
        rows = (partial.scaling or {}).get("rows", [])
        for row in rows[logged["rows"]:]:  # the scaling rows as they come
            metrics = {"scaling/n": row["n"], "scaling/conv_s": row["conv_s"]}
            if not row["matrix_skipped"]:
                metrics["scaling/matrix_s"] = row["matrix_s"]
            tr.log(metrics)
        logged["rows"] = len(rows)

    with status("conv: the chain, gradcheck, real networks, scaling ..."):
        result = run_conv(settings, on_progress=progress)
    results = result.to_dict()
    for t in result.display_tables():
        console.print(t.to_rich())
    for t in result.tables():
        tr.table(t)
    if result.scaling is not None:
        png = plot_scaling(result, run.dir / "scaling.png")
        results["scaling"]["plot"] = png.name
        tr.image("scaling_plot", png, caption=result.crossover_sentence())
        console.print(result.crossover_sentence(), highlight=False)
    run.results.update(results)
    tr.summary(**result.summary())
    checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in result.checks.items())
    console.print(f"conv {'[green]PASSED[/]' if result.passed else '[red]FAILED[/]'}: {checks}")
    console.print(f"results: {run.results.path}", soft_wrap=True)
    if not result.passed and settings.fail_on_mismatch:
        raise DnnlabError(result.failure())
    return run.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="conv")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "conv", job, prepare=prepare)


if __name__ == "__main__":
    launch("pipelines.conv")
