"""The report's section "1. Smooth max": the limits experiment at conf/smoothmax.yaml's
defaults, a table of the claims of docs/math.md (1a)-(1c), a table per input, the three plots."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dnnlab.core.section import Section
from dnnlab.smoothmax.limits import INF, LimitsResult, LimitsSettings, run, short
from dnnlab.smoothmax.plots import make_plots

PREFIX = "smoothmax_"  # the PNGs in the report's run dir: smoothmax_gap_vs_beta.png, ...
SUMMARY = ("all_bounds_hold", "worst_gap_bound_ratio", "max_grad1_softmax_err",
           "grad_onehot_dist_monotone", "hessian_holds", "max_hessian_err")


@dataclass
class ReportSettings(LimitsSettings):
    """conf/reproduce.yaml `smoothmax:`: the limits experiment's settings (LimitsSettings, the
    keys of conf/smoothmax.yaml, e.g. `smoothmax.n=100`); `{}` is the default run."""


def report_section(settings: ReportSettings, out_dir: Path) -> Section:
    """Run the limits experiment and write its plots into out_dir as smoothmax_*.png."""
    result = run(settings)
    pngs = make_plots(result, settings, Path(out_dir), prefix=PREFIX)
    return Section(
        title="1. Smooth max", markdown=markdown(result, pngs),
        images={f"smoothmax/{k}": p for k, p in pngs.items()},
        tables=[result.overview(settings.table_betas, key="smoothmax/limits")],
        summary={f"smoothmax/{k}": result.to_dict()[k] for k in SUMMARY})


def markdown(res: LimitsResult, pngs: dict[str, Path]) -> str:
    """The section's text: the claims table, a table per input, the plots."""
    h, yes = res.headline, {True: "yes", False: "NO"}
    finite = [b for b in res.betas if b != INF]
    at_top, at_inf = h["grad_onehot_dist_at_max_beta"], h["grad_onehot_dist_at_inf"]
    gap_inf = [r["gap"] for r in res.rows if r["beta"] == INF]
    first = [r["grad_onehot_dist"] for r in res.rows if r["beta"] == finite[0]]
    ok_1a = res.all_bounds_hold and all(g == 0 for g in gap_inf)
    ok_1c = h["grad_onehot_dist_monotone"] and all(v == 0 for v in at_inf.values())
    inf_1a = f"; gap at beta = inf: {max(gap_inf):.3g}" if gap_inf else ""
    inf_1c = f", at inf {max(at_inf.values()):.3g}" if at_inf else ""
    intro = ("nu_beta(x) = (1/beta) log sum_i exp(beta x_i), computed by "
             "`dnnlab.smoothmax.functional.smooth_max` (shifted by the max, its own backward), "
             f"on {len(res.inputs)} inputs of n = {res.n:,} entries ({', '.join(res.inputs)}) in "
             f"{res.dtype}, beta from {finite[0]:g} to {finite[-1]:g} ({len(finite)} "
             f"log-spaced){' and inf' if at_inf else ''}. Rerun and sweep with "
             "`python -m pipelines.smoothmax` (docs/smoothmax.md). With k tied maxima e_argmax "
             "gives 1/k to each (the limit of softmax(beta x)).\n")
    claim_1a = ("| (1a) nu_beta -> max x, 0 <= nu_beta - max x <= log(n)/beta | worst gap/bound "
                f"over the grid {short(h['worst_gap_bound_ratio'], 5)} ({res.dtype}), "
                f"{short(h['worst_gap_bound_ratio_f64'], 5)} (float64); smallest gap "
                f"{short(h['min_gap'])}{inf_1a} | {yes[ok_1a]} |")
    claim_1b = ("| (1b) grad nu_1 = softmax(x) | max abs error against torch.softmax (float64): "
                f"{h['max_grad1_softmax_err']:.2g} | {yes[h['grad1_softmax_holds']]} |")
    claim_1c = ("| (1c) grad nu_beta -> e_argmax | max over inputs of \\|\\|grad nu_beta - "
                f"e\\|\\|_1: {max(first):.3g} at beta = {finite[0]:g}, "
                f"{max(at_top.values()):.3g} at beta = {finite[-1]:g}{inf_1c}; non-increasing "
                f"in beta | {yes[ok_1c]} |")
    worst_1d = max(r["hessian_norm"] / r["hessian_bound"] for r in res.rows if r["beta"] != INF)
    claim_1d = ("| (1d) hess nu_beta = beta (diag(mu) - mu mu^T), trace beta (1 - sum mu^2), "
                "\\|\\|hess\\|\\|_2 <= beta/2 | max error against autograd through "
                f"torch.logsumexp and the trace (float64, relative to max(1, beta)): "
                f"{h['max_hessian_err']:.2g}; largest norm / bound {worst_1d:.3g} | "
                f"{yes[h['hessian_holds']]} |")
    head = (f"| input | worst gap/bound | \\|\\|grad - e\\|\\|_1 at beta = {finite[-1]:g} | "
            "at inf | \\|grad nu_1 - softmax\\| | \\|backward - autograd\\| |")
    per_input = ("\nPer input (worst over the grid; backward error against autograd through "
                 "torch.logsumexp, float64):\n")
    lines = ["\n## 1. Smooth max (docs/math.md (1a)-(1d))\n", intro,
             "| claim of docs/math.md | measured | holds |", "|---|---|---|",
             claim_1a, claim_1b, claim_1c, claim_1d, per_input, head, "|---|---|---|---|---|---|"]
    for name in res.inputs:
        rows = [r for r in res.rows if r["input"] == name]
        worst = max((r["ratio"] for r in rows if r["ratio"] is not None), default=None)
        lines.append(f"| {name} | {short(worst, 5)} | {short(at_top.get(name))} | "
                     f"{short(at_inf.get(name))} | {res.grad1_softmax_err[name]:.2g} | "
                     f"{max(r['grad_err_autograd'] for r in rows):.2g} |")
    lines += ["", f"![gap and bound against beta]({pngs['gap_vs_beta'].name})", "",
              f"![distance to the one-hot and entropy]({pngs['grad_vs_beta'].name})", "",
              f"![the Hessian's norm and its bound]({pngs['hessian_vs_beta'].name})", "",
              f"![softmax weights]({pngs['softmax_weights'].name})", ""]
    return "\n".join(lines) + "\n"
