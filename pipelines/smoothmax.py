"""The temperature limits of smooth max (docs/math.md (1a)-(1d)) over a grid of beta.

    python -m pipelines.smoothmax                          # n=1000, float32, 6 inputs, 29 betas
    python -m pipelines.smoothmax n=10 dtype=float16 inputs=[ties,neg_inf]
    python -m pipelines.smoothmax -m n=10,1000,100000      # one W&B run per job, one group

The experiment is dnnlab.smoothmax.limits (its rows and tolerances are described there; the
config is conf/smoothmax.yaml, see docs/smoothmax.md). Outputs: results.json (written as rows
come in), rows.csv, gap_vs_beta.png, grad_vs_beta.png, hessian_vs_beta.png, softmax_weights.png;
in W&B the same, and one history step per finite beta with beta, log10_beta, bound and
<key>/<input> (gap, ratio, grad_onehot_dist, grad_entropy, grad_err_autograd, hessian_norm).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnnlab.core.outputs import Outputs
from dnnlab.run.cli import launch, status
from dnnlab.run.config import register
from dnnlab.run.runtime import Run, run_job
from dnnlab.smoothmax import limits
from dnnlab.smoothmax.limits import HISTORY, LimitsResult, LimitsSettings
from dnnlab.smoothmax.plots import make_plots

register("smoothmax", LimitsSettings)
SUMMARY = ("all_bounds_hold", "worst_gap_bound_ratio", "worst_gap_bound_ratio_f64", "min_gap",
           "max_grad_err_autograd", "max_grad1_softmax_err", "grad_onehot_dist_monotone",
           "grad1_softmax_holds", "grad1_softmax_err", "grad_onehot_dist_at_max_beta",
           "grad_onehot_dist_at_inf", "hessian_holds", "max_hessian_err")


def job(settings: LimitsSettings, run: Run) -> Outputs:
    tr = run.tracker
    tr.define_metric("log10_beta")  # W&B charts the per-beta history against log10(beta)
    for key in [f"{k}/*" for k in HISTORY] + ["bound"]:
        tr.define_metric(key, step_metric="log10_beta")

    def progress(partial: LimitsResult) -> None:  # results.json and W&B as rows come in
        run.results.update(**partial.to_dict())
        history = partial.history(partial.done - 1)
        if history is not None:
            tr.log(history, step=partial.done - 1)

    with status(f"smooth max over {len(settings.beta.values())} betas, n={settings.n:,} ..."):
        result = limits.run(settings, on_progress=progress)
    pngs, done = make_plots(result, settings, run.dir), result.to_dict()
    return Outputs(done, result.tables(), pngs, show=[result.overview(settings.table_betas)],
                   summary={"plots": [p.name for p in pngs.values()],
                            **{k: done[k] for k in SUMMARY}})


@hydra.main(version_base="1.3", config_path="../conf", config_name="smoothmax")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "smoothmax", job)


if __name__ == "__main__":
    launch("pipelines.smoothmax")
