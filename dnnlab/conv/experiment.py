"""The conv experiment: its settings (the schema of conf/conv.yaml) and `run`.

    result = run(ConvSettings())      # the chain by every method, gradcheck, real nets, scaling
    result.to_dict()                  # results.json
    result.tables()                   # comparisons, real_nets, scaling (CSV, W&B)

Stages: 1. the chain of `chain` (conf/chain/), y_L and every gradient by the methods of
dnnlab.conv.chain, every pair compared (dnnlab.conv.verify); 2. torch.autograd.gradcheck through
our conv Function; 3. torchvision networks with `swap_convs` against native; 4. the cost of the
matrix and conv forms as n grows (dnnlab.conv.scaling). `on_progress(partial result)` is called
after each stage and each scaling row.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from dnnlab.conv import scaling as cost
from dnnlab.conv import verify
from dnnlab.conv.chain import Activation, ChainSpec
from dnnlab.conv.plots import plot_scaling
from dnnlab.core.dtypes import DType, tolerance_for, torch_dtype
from dnnlab.core.errors import MISSING, ConfigError, ShapeError, require
from dnnlab.core.outputs import Outputs
from dnnlab.core.table import Table
from dnnlab.core.timing import torch_threads


class ConfigShapeError(ShapeError, ConfigError):
    """A shape the chain cannot take, found in the config: names its key like a ConfigError
    (`chain.filters[0]=5: ...`), and is a ShapeError."""

    def under(self, prefix: str) -> ConfigShapeError:
        if self.key is None or not prefix:
            return self
        return ConfigShapeError.at(f"{prefix}.{self.key}", self.value, self.expected)


class Method(str, Enum):
    """A way to get the chain's gradients (dnnlab.conv.chain.METHODS)."""

    matrix = "matrix"
    conv = "conv"
    autograd = "autograd"
    dnnlab = "dnnlab"


class Device(str, Enum):
    """Where the scaling stage runs."""

    cpu = "cpu"
    cuda = "cuda"


@dataclass
class LayerSettings:
    """One entry of `chain.layers`: {f: 5, bias: false, activation: tanh}."""

    f: int = MISSING
    bias: bool | None = None  # null: chain.bias
    activation: Activation | None = None  # if given, chain.activation (the last layer: identity)


@dataclass
class ChainSettings:
    """conf/chain/*.yaml: the chain of docs/math.md (3), by `filters` or by a layer list."""

    n0: int = 64
    filters: list[int] | None = field(default_factory=lambda: [5, 3, 3])
    activation: Activation | None = Activation.sigmoid
    bias: Any = True  # one flag for all layers, or one per layer
    layers: list[LayerSettings] | None = None

    def __post_init__(self) -> None:
        require(self.n0 >= 1, "n0", self.n0, "must be >= 1")
        require(self.filters is None or self.layers is None, "filters", self.filters,
                "layers is set too: give one, the other null")
        if self.layers is None:
            require(bool(self.filters), "filters", self.filters, "expected filter sizes")
            fs, key = list(self.filters), "filters[{}]"
            bias = self.bias
            if isinstance(bias, (list, tuple)):
                require(len(bias) == len(fs), "bias", list(bias), f"expected {len(fs)} flags")
                for i, b in enumerate(bias):
                    require(isinstance(b, bool), f"bias[{i}]", b, "expected true or false")
                bias = list(bias)
            else:
                require(isinstance(bias, bool), "bias", bias, "expected true or false")
            act = self.activation
        else:
            require(bool(self.layers), "layers", self.layers, "expected at least one layer")
            require(isinstance(self.bias, bool), "bias", self.bias, "expected true or false")
            fs, key = [la.f for la in self.layers], "layers[{}].f"
            bias = [self.bias if la.bias is None else la.bias for la in self.layers]
            act = self._layer_activation()
        require(act is not None, "activation", None, "set it, or an activation in layers")
        n = self.n0
        for l, f in enumerate(fs, start=1):
            require(f >= 1, key.format(l - 1), f, "filter sizes must be >= 1")
            if f > n:  # docs/math.md (3): n_l = n_{l-1} - f_l + 1 >= 1
                raise ConfigShapeError.at(key.format(l - 1), f, f"layer {l}: filter size f={f} "
                                          f"> its input length n_{l - 1}={n} (n0={self.n0})")
            n -= f - 1
        self._spec = ChainSpec(n0=self.n0, filters=fs, activation=act.value, bias=bias)

    def _layer_activation(self) -> Activation | None:
        """One sigma for all hidden layers (docs/math.md (3)); the last layer is linear."""
        act, first = self.activation, "activation"
        last = len(self.layers) - 1
        for i, la in enumerate(self.layers):
            a, key = la.activation, f"layers[{i}].activation"
            if i == last:
                require(a in (None, Activation.identity), key, a and a.value,
                        "the last layer is linear (y_L = A y_(L-1) + b): leave it out")
            elif a is not None:
                if act is None:
                    act, first = a, key
                require(a == act, key, a.value, f"the hidden layers share one sigma, and "
                        f"{first} is {act.value!r}")
        return act

    def spec(self) -> ChainSpec:
        return self._spec


@dataclass
class RealNetSettings:
    """One entry of `real_nets`: a torchvision builder, an input shape, the dtype compared."""

    name: str = MISSING
    input_shape: list[int] = MISSING
    dtype: DType = DType.float64


@dataclass
class ScalingSettings:
    """The cost of the matrix and conv forms for n_0 = 2^n_min_log2 .. 2^n_max_log2."""

    enabled: bool = True
    n_min_log2: int = 6
    n_max_log2: int = 14
    filters: list[int] = field(default_factory=lambda: [3, 3, 3])
    activation: Activation | None = None  # null: chain's
    batch: int = 1
    dtype: DType = DType.float32
    repeats: int = 3  # median of at least this many timed runs
    threads: int | None = 1  # torch threads while timing (null: torch's default)
    device: Device = Device.cpu
    max_matrix_bytes: float = 2e9  # the matrix form is skipped above this

    def __post_init__(self) -> None:
        lo, hi = self.n_min_log2, self.n_max_log2
        require(lo >= 0, "n_min_log2", lo, "must be >= 0")
        require(lo <= hi, "n_min_log2", lo, f"must be <= n_max_log2={hi}")
        require(hi <= 24, "n_max_log2", hi, "at most 24 (n = 16M)")
        require(bool(self.filters), "filters", self.filters, "expected filter sizes")
        for i, f in enumerate(self.filters):
            require(f >= 1, f"filters[{i}]", f, "filter sizes must be >= 1")
        need = sum(f - 1 for f in self.filters) + 1
        if 2**lo < need:
            raise ConfigShapeError.at("n_min_log2", lo, f"n=2^{lo}={2**lo} is shorter than "
                                      f"the filters {list(self.filters)} need (n >= {need})")
        for k in ("batch", "repeats"):
            require(getattr(self, k) >= 1, k, getattr(self, k), "must be >= 1")
        require(self.threads is None or self.threads >= 1, "threads", self.threads,
                "must be >= 1 (or null)")
        require(self.max_matrix_bytes > 0, "max_matrix_bytes", self.max_matrix_bytes,
                "must be > 0")
        require(self.device == Device.cpu or torch.cuda.is_available(), "device",
                self.device.value, "no CUDA here: expected cpu")


def _default_real_nets() -> list[RealNetSettings]:
    return [RealNetSettings("resnet18", [2, 3, 64, 64]), RealNetSettings("alexnet", [2, 3, 96, 96])]


@dataclass
class ConvSettings:
    """conf/conv.yaml: what `run` checks and measures (docs/conv.md, Configuration)."""

    chain: ChainSettings = field(default_factory=ChainSettings)
    batch: int = 4  # inputs y_0 of shape (batch, n_0)
    dtype: DType = DType.float64  # of the chain comparisons
    seed: int = 0  # parameters, inputs and the cotangent u (J = sum <u, y_L>)
    methods: list[Method] = field(default_factory=lambda: list(Method))  # every pair compared
    tolerance: float = 1e-10  # float64 pass threshold (other dtypes: dtypes.tolerance_for)
    fail_on_mismatch: bool = True
    gradcheck: bool = True
    real_nets: list[RealNetSettings] = field(default_factory=_default_real_nets)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)

    def __post_init__(self) -> None:
        require(self.batch >= 1, "batch", self.batch, "must be >= 1")
        require(self.seed >= 0, "seed", self.seed, "must be >= 0")
        self.methods = list(dict.fromkeys(Method(m) for m in self.methods))  # each once
        require(len(self.methods) >= 2, "methods", [m.value for m in self.methods],
                f"expected at least two of {', '.join(m.value for m in Method)}")
        require(0 < self.tolerance < 1, "tolerance", self.tolerance, "expected a number in (0, 1)")
        if self.real_nets:
            import torchvision

            for i, e in enumerate(self.real_nets):
                builder = getattr(torchvision.models, e.name, None)
                require(callable(builder) and not isinstance(builder, type)
                        and not e.name.startswith("_"), f"real_nets[{i}].name", e.name,
                        "not a torchvision model builder")
                require(bool(e.input_shape) and all(s >= 1 for s in e.input_shape),
                        f"real_nets[{i}].input_shape", e.input_shape, "expected sizes >= 1")


# ----------------------------------------------------------------------------------------------
# the result


@dataclass
class ConvResult:
    """What `run` measured; `to_dict()` is results.json."""

    settings: ConvSettings
    comparisons: list[dict] = field(default_factory=list)  # chain rows, then real-net rows
    method_seconds: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)  # max |first method| per param
    gradcheck: dict | None = None
    real_nets: list[dict] = field(default_factory=list)
    scaling: dict | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    complete: bool = False

    @property
    def tol(self) -> float:
        return tolerance_for(self.settings.tolerance, torch_dtype(self.settings.dtype))

    @property
    def passed(self) -> bool | None:
        return all(self.checks.values()) if self.complete else None

    @property
    def chain_rows(self) -> list[dict]:
        return [r for r in self.comparisons if r["net"] == "chain"]

    def pairs(self) -> dict[str, dict]:
        return verify.pair_summary(self.chain_rows)

    def chain_info(self) -> dict:
        s = self.settings.chain.spec()
        return {"n0": s.n0, "filters": s.filters, "activation": s.activation,
                "bias": [s.has_bias(l) for l in range(1, s.depth + 1)], "sizes": s.sizes(),
                "depth": s.depth}

    def to_dict(self) -> dict:
        st = self.settings
        sc = self.scaling
        return {"chain": self.chain_info(), "dtype": st.dtype.value, "batch": st.batch,
                "methods": [m.value for m in st.methods], "tolerance": self.tol,
                "tolerance_float64": st.tolerance, "complete": self.complete,
                "passed": self.passed, "comparisons": self.comparisons, "pairs": self.pairs(),
                "method_seconds": self.method_seconds,
                "gradcheck": {"enabled": False} if self.gradcheck is None
                else {"enabled": True, **self.gradcheck},
                "real_nets": self.real_nets,
                "scaling": {"enabled": False} if sc is None else {"enabled": True, **sc},
                "checks": self.checks}

    def summary(self) -> dict[str, Any]:
        """The W&B summary values."""
        out: dict[str, Any] = {}
        for k, v in self.pairs().items():
            out[f"chain/{k}/max_abs_err"] = v["max_abs_err"]
            out[f"chain/{k}/max_rel_err"] = v["max_rel_err"]
        if self.gradcheck is not None:
            out["gradcheck/passed"] = self.gradcheck["passed"]
        for r in self.real_nets:
            out[f"real/{r['name']}/max_abs_err"] = r["max_abs_err"]
            out[f"real/{r['name']}/max_rel_err"] = r["max_rel_err"]
        if self.scaling is not None and "analysis" in self.scaling:
            out["scaling/crossover_n"] = self.scaling["analysis"]["crossover_n"]
            out["scaling/matrix_skipped"] = self.scaling["analysis"]["matrix_skipped"]
        out["passed"] = self.passed
        return out

    def failure(self) -> str | None:
        """One line on the first failing check (None if all pass)."""
        if self.passed is not False:
            return None
        bad = [r for r in self.comparisons if not r["passed"]]
        first = (f"first: {bad[0]['a']} vs {bad[0]['b']} {bad[0]['param']} abs "
                 f"{bad[0]['max_abs_err']:.2e} rel {bad[0]['max_rel_err']:.2e}" if bad else
                 f"gradcheck: {(self.gradcheck or {}).get('errors')}")
        failed = ", ".join(k for k, v in self.checks.items() if not v)
        return f"conv failed ({failed}; tolerance {self.tol:.1e}): {first}"

    def crossover_sentence(self) -> str:
        sc = self.scaling
        return cost.crossover_sentence(sc["rows"], sc["analysis"], sc["max_matrix_bytes"])

    # -- tables -----------------------------------------------------------------------------------
    def tables(self) -> list[Table]:
        """The CSV / W&B tables: comparisons, real_nets (if any), scaling (if run)."""
        cols = ["net", "a", "b", "param", "max_abs_err", "max_rel_err", "passed"]
        out = []
        real = [r for r in self.comparisons if r["net"] != "chain"]
        if self.real_nets:
            c = ["net", "param", "max_abs_err", "max_rel_err", "passed"]
            out.append(Table("real_nets", c, [[r[k] for k in c] for r in real]))
        out.append(Table("comparisons", cols, [[r[k] for k in cols] for r in self.comparisons]))
        if self.scaling is not None and "analysis" in self.scaling:
            out.append(Table("scaling", SCALING_COLS, [
                [r["n"], r["matrix_s"], r["conv_s"],
                 None if r["matrix_skipped"] else r.get("ratio") or r["matrix_s"] / r["conv_s"],
                 r["matrix_a_bytes"], r["matrix_bytes"], r["conv_bytes"], r["matrix_skipped"]]
                for r in self.scaling["rows"]]))
        return out

    def chain_table(self) -> Table:
        """Per parameter: its formula (docs/math.md (3a)), max |ref| and each pair's errors."""
        st, s = self.settings, self.settings.chain.spec()
        pairs = list(itertools.combinations([m.value for m in st.methods], 2))
        by = {(r["param"], r["a"], r["b"]): r for r in self.chain_rows}
        rows = [[p, verify.formula(p), scale] + [_err_cell(by[(p, a, b)]) for a, b in pairs]
                for p, scale in self.scale.items()]
        return Table("chain", ["param", "(3a)", "max |ref|"] + [f"{a} vs {b}" for a, b in pairs],
                     rows, formats={"max |ref|": "{:.3g}"},
                     title=f"chain n0={s.n0} f={s.filters} {s.activation} batch={st.batch} "
                           f"{st.dtype.value}: max abs / max rel error (pass <= {self.tol:.1e})")

    def real_nets_table(self) -> Table:
        cols = ["network", "input", "dtype", "convs", "params", "max abs", "max rel", "worst",
                "pass"]
        return Table("real_nets_summary", cols, [
            [s["name"], s["input_shape"], s["dtype"], s["convs_swapped"], s["params_compared"],
             s["max_abs_err"], s["max_rel_err"], s["worst_param"], s["passed"]]
            for s in self.real_nets],
            title="real networks: swap_convs'd (dnnlab) vs native (torch) gradients",
            formats={"max abs": "{:.1e}", "max rel": "{:.1e}"})

    def scaling_table(self) -> Table:
        sc = self.scaling
        rows = []
        for r in sc["rows"]:
            sk = r["matrix_skipped"]
            rows.append([cost.log2_label(r["n"]), "skipped" if sk else r["matrix_s"] * 1e3,
                         r["conv_s"] * 1e3, "-" if sk else cost.ratio_text(r),
                         f"{r['matrix_a_bytes'] / 2**20:.1f} MiB" + (" (too big)" if sk else ""),
                         f"{r['conv_bytes'] / 2**10:.1f} KiB"])
        return Table("scaling_summary", ["n", "matrix ms", "conv ms", "matrix/conv", "A_w",
                                         "conv form holds"], rows,
                     title=f"forward+backward, matrix form vs conv form (chain f="
                           f"{sc['filters']}, {sc['activation']}, batch {sc['batch']}, "
                           f"{sc['dtype']})",
                     formats={"matrix ms": _num("{:.3f}"), "conv ms": "{:.3f}",
                              "matrix/conv": _num("{:.1f}x")})

    def display_tables(self) -> list[Table]:
        """The terminal's (and the report's) views: chain errors, real nets, scaling."""
        out = [self.chain_table()]
        if self.real_nets:
            out.append(self.real_nets_table())
        if self.scaling is not None and "analysis" in self.scaling:
            out.append(self.scaling_table())
        return out

    def outputs(self, out_dir: Path, fail_on_mismatch: bool = True) -> Outputs:
        """The run's outputs: results, tables, the scaling plot (drawn into `out_dir`), the
        terminal's tables and verdict, and a failure when a check failed (if it should)."""
        out = Outputs(self.to_dict(), self.tables(), summary=self.summary(),
                      show=self.display_tables())
        if self.scaling is not None:
            png = out.images["scaling_plot"] = plot_scaling(self, Path(out_dir) / "scaling.png")
            out.results["scaling"]["plot"] = png.name
            out.captions["scaling_plot"] = self.crossover_sentence()
            out.show.append(self.crossover_sentence())
        checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in self.checks.items())
        out.show.append(f"conv {'[green]PASSED[/]' if self.passed else '[red]FAILED[/]'}: {checks}")
        if not self.passed and fail_on_mismatch:
            out.failure = self.failure()
        return out


SCALING_COLS = ["n", "matrix_s", "conv_s", "matrix_over_conv", "matrix_a_bytes", "matrix_bytes",
                "conv_bytes", "matrix_skipped"]


def _num(fmt: str) -> Callable[[Any], str]:
    """Format numbers with `fmt`, show text ("skipped") as is."""
    return lambda v: v if isinstance(v, str) else fmt.format(v)


def _err_cell(r: dict) -> str:
    txt = f"{r['max_abs_err']:.1e}/{r['max_rel_err']:.1e}"
    return txt if r["passed"] else f"{txt} FAIL"


# ----------------------------------------------------------------------------------------------
# the run


def build_real_net(name: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """torchvision's `name` (weights=None) in `dtype`, train mode, its init drawn from `seed`."""
    import torchvision

    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None).to(dtype).train()


def check_real_nets(settings: ConvSettings) -> None:
    """Each real network built on meta and run on its input shape (no memory, well under a
    second): ShapeError naming `real_nets[i]` for an input it cannot take, before any stage."""
    from dnnlab.opcount import count_ops

    for i, net in enumerate(settings.real_nets):
        with torch.device("meta"):
            model = build_real_net(net.name, torch_dtype(net.dtype), settings.seed)
        try:
            count_ops(model, net.input_shape, dtype=torch_dtype(net.dtype), training=True)
        except ShapeError as err:
            raise ShapeError(f"real_nets[{i}] ({net.name}, input_shape={list(net.input_shape)})"
                             f": {err}") from None


def run_scaling(sc: ScalingSettings, activation: str,
                on_row: Callable[[dict], None] | None = None) -> dict:
    """dnnlab.conv.scaling one n at a time, with `threads` torch threads (1 by default: the
    chain's tensors are tiny, and on a shared machine an intra-op pool waiting for a busy core
    costs far more than such a step computes; benchmarks/conv.py times the forms)."""
    out = {"filters": list(sc.filters), "activation": activation, "batch": sc.batch,
           "dtype": sc.dtype.value, "repeats": sc.repeats, "max_matrix_bytes": sc.max_matrix_bytes,
           "threads": sc.threads or torch.get_num_threads(), "device": sc.device.value,
           "rows": []}
    with torch_threads(sc.threads):
        for k in range(sc.n_min_log2, sc.n_max_log2 + 1):
            out["rows"].append(cost.measure_row(
                2**k, sc.filters, activation, batch=sc.batch, dtype=torch_dtype(sc.dtype),
                device=sc.device.value, repeats=sc.repeats,
                max_matrix_bytes=sc.max_matrix_bytes, threads=sc.threads))
            if on_row:
                on_row(out)
    out["analysis"] = cost.analyse(out["rows"])
    return out


def run(settings: ConvSettings, on_progress: Callable[[ConvResult], None] | None = None
        ) -> ConvResult:
    """All four stages (see the module doc); `on_progress(result)` after each stage / row."""
    st = settings
    spec = st.chain.spec()
    result = ConvResult(st)
    report = on_progress or (lambda r: None)
    methods = [m.value for m in st.methods]

    # 1. the chain, every pair of methods
    res = verify.compare_methods(spec, methods, st.batch, torch_dtype(st.dtype), st.seed,
                                 result.tol)
    result.comparisons, result.method_seconds = res["comparisons"], res["seconds"]
    result.scale = res["scale"]
    result.checks["chain"] = all(r["passed"] for r in result.comparisons)
    report(result)

    # 2. gradcheck through our Function
    if st.gradcheck:
        result.gradcheck = verify.gradcheck_chain(spec, st.batch, st.seed)
        result.checks["gradcheck"] = result.gradcheck["passed"]
        report(result)

    # 3. real networks, swap_convs'd against native
    for i, net in enumerate(st.real_nets):
        dtype = torch_dtype(net.dtype)
        model = build_real_net(net.name, dtype, st.seed)
        r = verify.compare_real_net(model, net.name, net.input_shape, st.seed,
                                    tolerance_for(st.tolerance, dtype), key=f"real_nets[{i}]")
        result.real_nets.append(r["summary"])
        result.comparisons = result.comparisons + r["comparisons"]
        result.checks[net.name] = r["summary"]["passed"]
        report(result)

    # 4. cost of the two forms
    if st.scaling.enabled:
        act = (st.scaling.activation or Activation(spec.activation)).value

        def on_row(partial: dict) -> None:
            result.scaling = partial
            report(result)

        result.scaling = run_scaling(st.scaling, act, on_row)
    result.complete = True
    report(result)
    return result
