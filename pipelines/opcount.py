"""Count the multiplications and additions of a network (seed, problem 2), reconciled with fvcore.

    python -m pipelines.count_ops model=alexnet
    python -m pipelines.count_ops -m model=alexnet,resnet18,vit_b_16
    python -m pipelines.count_ops model=alexnet input_shape=[1,3,32,32]   # one-line error

Writes results.json, results.csv, layers.csv, per_layer.png into the run dir, and the same to
W&B (the table as a wandb.Table, totals in the summary).
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from dnnlab.cli import console, run_job
from dnnlab.errors import ConfigError, DnnlabError
from dnnlab.models import build_model, materialize
from dnnlab.opcount import MAC_FAMILIES, count_ops
from dnnlab.opcount.reconcile import STRICT, reconcile
from dnnlab.plots import bar_per_layer
from dnnlab.tracking import Tracker

COLORS = {"conv": "tab:blue", "linear": "tab:orange", "matmul": "tab:green",
          "attention": "tab:red"}


def _shape(cfg: DictConfig) -> list:
    shape = cfg.get("input_shape")
    if OmegaConf.is_config(shape):
        shape = OmegaConf.to_container(shape, resolve=True)
    if not isinstance(shape, (list, tuple)):
        raise ConfigError(f"input_shape: expected a list of ints, got {shape!r}")
    try:
        shape = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape: expected a list of ints, got {shape}") from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"input_shape: every size must be >= 1, got {shape}")
    return shape


def analyse(cfg: DictConfig) -> dict:
    """Count (and reconcile) the model of `cfg`; returns the results dict."""
    shape = _shape(cfg)
    name = str(cfg.model.get("name", "model"))
    model = build_model(cfg.model, device="meta")
    report = count_ops(model, shape, count_bias=bool(cfg.count.bias), name=name,
                       training=bool(cfg.get("training", False)))
    rec = None
    if cfg.get("reconcile", True):
        model = materialize(model)
        rec = reconcile(model, shape, report=report, backward=bool(cfg.count.backward))
    fv = {}
    if rec is not None:
        for r in rec.rows:
            fv[(r.path, r.family)] = r
    layers = []
    for row in report.layers:
        c = fv.get((row.path, row.family))
        layers.append({
            "path": row.path, "type": row.module_type, "op": row.op, "family": row.family,
            "in_shape": row.in_shape, "out_shape": row.out_shape, "mults": row.mults,
            "adds": row.adds, "macs": row.macs, "bwd_macs": row.bwd_macs,
            "fvcore": None if c is None else c.fvcore,
            "match": None if c is None else c.match,
            "why": "" if c is None else c.why})
    totals = {}
    for fam, v in report.totals().items():
        totals[fam] = {"analytic": int(v), "fvcore": None}
    if rec is not None:
        for fam, v in rec.totals.items():
            totals.setdefault(fam, {"analytic": 0, "fvcore": None})["fvcore"] = v["fvcore"]
            if fam in MAC_FAMILIES or fam in STRICT:
                totals[fam]["analytic"] = v["analytic"]
    results = {
        "model": name, "input_shape": shape, "count_bias": bool(cfg.count.bias),
        "layers": layers, "totals": totals,
        "backward_totals": report.totals(backward=True) if cfg.count.backward else None,
        "reconciled": None if rec is None else bool(rec.reconciled),
        "flop_counter": None if rec is None else rec.flop_counter,
        "mismatches": [] if rec is None else [
            {"path": r.path, "family": r.family, "analytic": r.analytic, "fvcore": r.fvcore,
             "why": r.why} for r in rec.rows if not r.match],
    }
    return {"results": results, "report": report}


def print_tables(results: dict, show_rows: int = 60) -> None:
    t = Table(title=f"{results['model']} {results['input_shape']}: per layer", show_lines=False)
    for col, j in [("layer", "left"), ("type", "left"), ("in -> out", "left"), ("mults", "right"),
                   ("adds", "right"), ("MACs", "right"), ("fvcore", "right"), ("match", "center")]:
        t.add_column(col, justify=j)
    rows = [r for r in results["layers"] if r["family"] in MAC_FAMILIES]
    for r in rows[:show_rows]:
        m = "" if r["match"] is None else ("[green]yes[/]" if r["match"] else "[red]no[/]")
        t.add_row(r["path"] or "<model>", f"{r['type']}/{r['op']}",
                  f"{'x'.join(map(str, r['in_shape']))} -> {'x'.join(map(str, r['out_shape']))}",
                  f"{r['mults']:,}", f"{r['adds']:,}", f"{r['macs']:,}",
                  "" if r["fvcore"] is None else f"{r['fvcore']:,}", m)
    if len(rows) > show_rows:
        t.caption = f"... {len(rows) - show_rows} more rows in results.csv"
    console.print(t)
    tt = Table(title="totals per family (MACs; elementwise families: ops)")
    for col in ("family", "dnnlab", "fvcore", "equal"):
        tt.add_column(col, justify="right" if col != "family" else "left")
    for fam, v in results["totals"].items():
        eq = "" if v["fvcore"] is None else (
            "[green]yes[/]" if v["analytic"] == v["fvcore"] else "[yellow]no[/]")
        tt.add_row(fam, f"{v['analytic']:,}", "" if v["fvcore"] is None else f"{v['fvcore']:,}",
                   eq)
    console.print(tt)
    if results.get("flop_counter"):
        fc = results["flop_counter"]
        console.print(f"training step vs torch FlopCounterMode: forward {fc['forward_flops_analytic']:,}"
                      f" / {fc['forward_flops_torch']:,} flops, backward "
                      f"{fc['backward_flops_analytic']:,} / {fc['backward_flops_torch']:,}: "
                      f"{'[green]match[/]' if fc['match'] else '[red]MISMATCH[/]'} {fc['why']}")


def plot(results: dict, out: Path) -> Path:
    rows = [r for r in results["layers"] if r["family"] in MAC_FAMILIES]
    return bar_per_layer([r["path"] or r["op"] for r in rows], [r["macs"] for r in rows],
                         [COLORS[r["family"]] for r in rows],
                         f"{results['model']} {results['input_shape']}: MACs per layer", out)


def job(cfg: DictConfig, tracker: Tracker) -> dict:
    with console.status(f"counting {cfg.model.get('name')} ..."):
        res = analyse(cfg)
    results, report = res["results"], res["report"]
    tracker.results.update(results)
    tracker.save()
    report.to_csv(tracker.run_dir / "results.csv")
    print_tables(results, int(cfg.get("show_rows", 60)))
    png = plot(results, tracker.run_dir / "per_layer.png")
    tracker.image("per_layer", png)
    cols = ["path", "type", "op", "family", "in_shape", "out_shape", "mults", "adds", "macs",
            "fvcore", "match"]
    tracker.table("layers", cols, [[r[c] if not c.endswith("shape") else "x".join(
        map(str, r[c])) for c in cols] for r in results["layers"]])
    tracker.summary(**{f"macs/{k}": v["analytic"] for k, v in results["totals"].items()},
                    **{f"fvcore/{k}": v["fvcore"] for k, v in results["totals"].items()
                       if v["fvcore"] is not None}, reconciled=results["reconciled"])
    console.print(f"results: {tracker.run_dir / 'results.json'}")
    if cfg.get("fail_on_mismatch", False) and results["reconciled"] is False:
        bad = [m for m in results["mismatches"] if m["family"] in STRICT]
        raise DnnlabError(f"conv/linear counts differ from fvcore at {len(bad)} rows, first: "
                          f"{bad[0] if bad else results['totals']}")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="count_ops")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "count_ops", job)


def report_section(cfg: DictConfig, out: Path, tracker: Tracker) -> str:
    """The report's section for seed problem 2: AlexNet's counts per layer, and fvcore."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    models = list(cfg.get("opcount", {}).get("models", ["alexnet"]))
    results = []
    for name in models:
        if GlobalHydra.instance().is_initialized():
            sub = compose(config_name="count_ops", overrides=[f"model={name}"])
        else:  # pragma: no cover - report_section is called under Hydra
            raise RuntimeError("report_section needs Hydra")
        res = analyse(sub)["results"]
        results.append(res)
        print_tables(res, show_rows=0)
    alex = results[0]
    png = plot(alex, out / f"opcount_{alex['model']}_per_layer.png")
    tracker.image("opcount/per_layer", png)
    seed = {"conv": 655_566_528, "linear": 58_621_952}
    lines = ["\n## 2. Counting operations (seed problem 2)\n",
             "Seed 2: a conv output costs C_in k^2 multiplications and C_in k^2 additions "
             "(counting the bias add); there are C_out H_out W_out outputs. Linear: in x out. "
             "Counted on the meta device by `dnnlab.opcount.count_ops`, checked against fvcore "
             "(traced on CPU) and, for a training step, torch's FlopCounterMode.\n",
             "| seed claim | measured (dnnlab) | fvcore | holds |", "|---|---|---|---|"]
    for fam in ("conv", "linear"):
        ours, fv = alex["totals"][fam]["analytic"], alex["totals"][fam]["fvcore"]
        ok = ours == seed[fam] == fv
        lines.append(f"| AlexNet {fam}: mults = adds = {seed[fam]:,} | {ours:,} | {fv:,} | "
                     f"{'yes' if ok else 'NO'} |")
    lines += ["\nAlexNet per layer (input 1x3x224x224):\n",
              "| layer | op | in -> out | mults | adds | fvcore MACs |", "|---|---|---|---|---|---|"]
    for r in alex["layers"]:
        if r["family"] in ("conv", "linear"):
            lines.append(f"| {r['path']} | {r['op']} | {'x'.join(map(str, r['in_shape']))} -> "
                         f"{'x'.join(map(str, r['out_shape']))} | {r['mults']:,} | {r['adds']:,}"
                         f" | {r['fvcore']:,} |")
    lines += [f"\n![MACs per layer]({png.name})\n", "Other networks (MACs):\n",
              "| model | conv (dnnlab / fvcore) | linear (dnnlab / fvcore) | attention (fvcore "
              "skips it) | training step vs FlopCounterMode |", "|---|---|---|---|---|"]
    for res in results:
        t = res["totals"]
        fc = res["flop_counter"] or {}
        lines.append(f"| {res['model']} | {t['conv']['analytic']:,} / {t['conv']['fvcore']:,} | "
                     f"{t['linear']['analytic']:,} / {t['linear']['fvcore']:,} | "
                     f"{t['attention']['analytic']:,} | "
                     f"{'match' if fc.get('match') else 'MISMATCH'} |")
    tracker.summary(**{f"opcount/{r['model']}/reconciled": r["reconciled"] for r in results})
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from dnnlab.cli import launch

    launch("pipelines.count_ops")
