"""The op count's section of report.md: AlexNet's counts per layer against docs/math.md (2) and
fvcore, and other torchvision networks (conf/reproduce.yaml `opcount:`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dnnlab.core.errors import require
from dnnlab.core.section import Section
from dnnlab.core.table import Table
from dnnlab.opcount.build import build_meta, torchvision_input_shape
from dnnlab.opcount.experiment import OpcountResult, run
from dnnlab.opcount.plots import plot_per_layer

# docs/math.md (2): AlexNet at 1x3x224x224, mults = adds (counting the bias add)
CLAIM = {"conv": 655_566_528, "linear": 58_621_952}
LABEL = {"alexnet": "AlexNet"}


@dataclass
class ReportSettings:
    """conf/reproduce.yaml `opcount:`: the torchvision networks counted (the first is shown
    per layer and checked against docs/math.md (2)), built without weights."""

    models: list[str] = field(default_factory=lambda: ["alexnet", "resnet18", "vit_b_16"])

    def __post_init__(self) -> None:
        import torchvision

        require(len(self.models) > 0, "models", self.models, "expected at least one model")
        known = set(torchvision.models.list_models(module=torchvision.models))
        for i, name in enumerate(self.models):
            require(name in known, f"models[{i}]", name,
                    "expected a torchvision classifier (torchvision.models.list_models())")


def count_torchvision(name: str) -> OpcountResult:
    """Count and reconcile the torchvision classifier `name` at its default input size."""
    import torchvision

    model = build_meta(lambda: torchvision.models.get_model(name, weights=None))
    return run(model, torchvision_input_shape(name, model), name=name)


def _x(shape: list) -> str:
    return "x".join(map(str, shape))


def report_section(settings: ReportSettings, out_dir: Path) -> Section:
    """Count every model of `settings`; the first one per layer, with the claim of (2)."""
    results = [count_torchvision(name) for name in settings.models]
    first = results[0]
    png = plot_per_layer(first, Path(out_dir) / f"opcount_{first.model}_per_layer.png")
    claims = Table("opcount/claims", ["claim (docs/math.md (2))", "measured (dnnlab)", "fvcore",
                                      "holds"], [], formats={"measured (dnnlab)": "{:,}",
                                                             "fvcore": "{:,}"})
    totals = first.totals()
    for fam in ("conv", "linear"):
        ours, fv = totals[fam]["analytic"], totals[fam]["fvcore"]
        holds = "yes" if ours == CLAIM[fam] == fv else "NO"
        claims.rows.append([f"AlexNet {fam}: mults = adds = {CLAIM[fam]:,}", ours, fv, holds])
    per_layer = Table("opcount/per_layer", ["layer", "op", "in -> out", "mults", "adds",
                                            "fvcore MACs"], [
        [r["path"], r["op"], f"{_x(r['in_shape'])} -> {_x(r['out_shape'])}", r["mults"],
         r["adds"], r["fvcore"]]
        for r in first.layers() if r["family"] in ("conv", "linear")],
        formats={c: "{:,}" for c in ("mults", "adds", "fvcore MACs")})
    others = Table("opcount/models", ["model", "conv (dnnlab / fvcore)",
                                      "linear (dnnlab / fvcore)", "attention (fvcore skips it)",
                                      "training step vs FlopCounterMode"], [])
    for res in results:
        t = res.totals()
        fc = res.reconciliation.flop_counter if res.reconciliation else {}
        others.rows.append([
            res.model, f"{t['conv']['analytic']:,} / {t['conv']['fvcore']:,}",
            f"{t['linear']['analytic']:,} / {t['linear']['fvcore']:,}",
            f"{t['attention']['analytic']:,}", "match" if fc.get("match") else "MISMATCH"])
    md = "\n".join([
        "\n## 2. Counting operations (docs/math.md (2))\n",
        "docs/math.md (2): a conv output costs C_in k^2 multiplications and C_in k^2 additions "
        "(counting the bias add); there are C_out H_out W_out outputs. Linear: in x out. "
        "Counted on the meta device by `dnnlab.opcount.count_ops`, checked against fvcore "
        "(traced on CPU) and, for a training step, torch's FlopCounterMode.\n",
        claims.to_markdown(),
        f"\n{LABEL.get(first.model, first.model)} per layer (input {_x(first.input_shape)}):\n",
        per_layer.to_markdown(),
        f"\n![MACs per layer]({png.name})\n",
        "Other networks (MACs):\n",
        others.to_markdown()])
    return Section(title="2. Counting operations", markdown=md + "\n",
                   images={"opcount/per_layer": png}, tables=[claims, per_layer, others],
                   summary={f"opcount/{r.model}/reconciled": r.reconciled for r in results})
