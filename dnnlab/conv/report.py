"""The main job's section on convolution backprop (docs/math.md (3)-(3b)): the chain's gradients
by every method, gradcheck, real networks and the cost of the two forms, measured now."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from dnnlab.conv.experiment import ConvSettings, RealNetSettings, ScalingSettings, run
from dnnlab.conv.plots import plot_scaling
from dnnlab.conv.scaling import log2_label, ratio_text
from dnnlab.conv.verify import formula
from dnnlab.core.section import Section

TITLE = "3. Convolution backprop"


@dataclass
class ReportSettings(ConvSettings):
    """conf/reproduce.yaml `conv:`: conf/conv.yaml's settings, with a fast default: smaller real
    networks and n = 2^3 .. 2^12, where a crossover would be."""

    real_nets: list[RealNetSettings] = field(default_factory=lambda: [
        RealNetSettings("resnet18", [2, 3, 32, 32]), RealNetSettings("alexnet", [1, 3, 64, 64])])
    scaling: ScalingSettings = field(
        default_factory=lambda: ScalingSettings(n_min_log2=3, n_max_log2=12))


INTRO = ("docs/math.md (3a): for y_l = sigma(A_{w_l} y_{l-1} + b_l 1) (l < L), y_L = A_{w_L} "
         "y_{L-1} + b_L 1, with v_l = dy_L/dy_l * sigma'(A_{w_l} y_{l-1} + b_l 1): "
         "**dy_L/dw_l = C_{v_l^T} y_{l-1}**, **dy_L/db_l = v_l . 1**, dy_L/dy_{l-1} = "
         "A_{w_l}^T v_l. (3b): the same by convolution forward and transposed convolution "
         "backward, A_w never formed. The vector y_L is reduced with a random cotangent u "
         "(J = sum <u, y_L>), so each method gives u^T dy_L/dw_l and u^T dy_L/db_l.\n")


def report_section(settings: ReportSettings, out_dir: Path) -> Section:
    """Run the conv experiment at `settings` and write its section (conv_scaling.png)."""
    r = run(settings)
    st, s = settings, settings.chain.spec()
    methods = [m.value for m in st.methods]
    pairs = list(itertools.combinations(methods, 2))
    by = {(c["param"], c["a"], c["b"]): c for c in r.chain_rows}
    ok_chain = r.checks["chain"]
    lines = [f"\n## {TITLE}\n", INTRO,
             (f"Checked on n_0 = {s.n0}, f = {s.filters}, sigma = {s.activation}, batch "
              f"{st.batch}, {st.dtype.value}; methods: matrix (A_w and C_(v^T) formed), conv "
              f"((3b)), autograd (torch through conv1d), dnnlab (our Conv1d's hand-written "
              f"backward). Max abs / max rel error (rel: / max |first method|); pass <= "
              f"{r.tol:.0e}: **{'all pass' if ok_chain else 'FAILED'}**.\n"),
             "| param | docs/math.md (3a) | " + " | ".join(f"{a} vs {b}" for a, b in pairs)
             + " |", "|---|---|" + "---|" * len(pairs)]
    for param in r.scale:
        cells = [by[(param, a, b)] for a, b in pairs]
        lines.append(f"| {param} | {formula(param)} | " + " | ".join(
            f"{c['max_abs_err']:.1e} / {c['max_rel_err']:.1e}" for c in cells) + " |")
    gc = r.gradcheck
    if gc:
        lines.append(f"\ntorch.autograd.gradcheck (float64, n_0 = {gc['n0']}, batch "
                     f"{gc['batch']}) through dnnlab's conv Function: " + ", ".join(
                         f"weight grad {m}: {'passed' if ok else 'FAILED'}"
                         for m, ok in gc["modes"].items()) + ".\n")
    if r.real_nets:
        lines += [("Real networks (torchvision, weights=None, train mode): every parameter's "
                   "and the input's gradient with `swap_convs` against the native network.\n"),
                  ("| network | input | convs swapped | gradients compared | max abs | max rel | "
                   "pass |"), "|---|---|---|---|---|---|---|"]
        for q in r.real_nets:
            lines.append(f"| {q['name']} | {'x'.join(map(str, q['input_shape']))} {q['dtype']} | "
                         f"{q['convs_swapped']} | {q['params_compared']} | "
                         f"{q['max_abs_err']:.1e} | {q['max_rel_err']:.1e} | "
                         f"{'yes' if q['passed'] else 'NO'} |")
        if all(q["max_abs_err"] == 0 for q in r.real_nets):
            lines.append("\nThe gradients agree to the last bit (error 0.0).")
    images, sc = {}, r.scaling
    if sc:
        png = plot_scaling(r, Path(out_dir) / "conv_scaling.png")
        images["conv/scaling"] = png
        lines += [(f"\nCost of forward+backward ({sc['dtype']}, f = {sc['filters']}, batch "
                   f"{sc['batch']}, {sc['threads']} thread(s), median of >= {sc['repeats']} "
                   f"runs):\n"),
                  "| n | matrix ms | conv ms | matrix/conv | A_w bytes |", "|---|---|---|---|---|"]
        for row in sc["rows"]:
            sk = row["matrix_skipped"]
            mat = "skipped" if sk else f"{row['matrix_s'] * 1e3:.3f}"
            ratio = "-" if sk else ratio_text(row)
            lines.append(f"| {log2_label(row['n'])} | {mat} | {row['conv_s'] * 1e3:.3f} | "
                         f"{ratio} | {row['matrix_a_bytes']:,} |")
        lines += [f"\n![matrix vs conv form]({png.name})\n", r.crossover_sentence() + "\n"]
    passed = ok_chain and (gc is None or gc["passed"]) and all(q["passed"] for q in r.real_nets)
    summary = {"conv/passed": passed,
               **{f"conv/{k}/max_abs_err": v["max_abs_err"] for k, v in r.pairs().items()},
               **({"conv/crossover_n": sc["analysis"]["crossover_n"]} if sc else {})}
    tables = r.display_tables()
    for t in tables:
        t.key = f"conv/{t.key}"
    return Section(TITLE, "\n".join(lines) + "\n", images=images, tables=tables, summary=summary)
