"""Check the seed's convolution backprop (problem 4) several ways, and measure what it costs.

    python -m pipelines.grad_check
    python -m pipelines.grad_check seednet=deep dtype=float32
    python -m pipelines.grad_check -m net.activation=sigmoid,tanh,relu      # one W&B group
    python -m pipelines.grad_check net.n0=4 net.filters=[5]                 # one-line error

Stages (results.json is rewritten after each one):
1. The seed network of `net` (conf/seednet/): dJ/dw_l, dJ/db_l and y_L by the matrix form (A_w and
   C_{v^T} formed), the conv form (seed 4b), torch autograd and dnnlab.nn.Conv1d; every pair
   of methods compared per layer and parameter (max abs and max rel error).
2. torch.autograd.gradcheck of the seed network through dnnlab's conv Function.
3. torchvision networks (`real_nets`): swap_convs'd against native, every parameter gradient.
4. Cost of forward+backward, matrix vs conv form, as n grows (`scaling`): table and log-log plot.

Writes results.json, comparisons.csv, real_nets.csv, scaling.csv and scaling.png into the run dir,
and the same to W&B. `report_section` gives the main job's section on seed problem 4.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch.autograd.gradcheck import GradcheckError

from dnnlab.cli import console, run_job
from dnnlab.errors import ConfigError, DnnlabError, ShapeError
from dnnlab.gradcheck import OUR_CONVS, errors
from dnnlab.nn import Conv1d, swap_convs
from dnnlab.nn.conv import ConvNdFunction, weight_grad_mode
from dnnlab.plots import plt, save
from dnnlab.seednet import ACTIVATIONS, SeedNetSpec, init_params, scaling
from dnnlab.seednet import METHODS as SEED_METHODS
from dnnlab.tracking import Tracker

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
EPS64 = torch.finfo(torch.float64).eps
LAYER_KEYS = {"f", "bias", "activation"}

# ----------------------------------------------------------------------------------------------
# the config, checked before any work: every error names its key


def _status(msg: str):
    """A spinner in a terminal; nothing when piped (no refresh thread while timing)."""
    return console.status(msg) if console.is_terminal else contextlib.nullcontext()


@contextlib.contextmanager
def _threads(n: int | None):
    """torch.set_num_threads(n) inside the block (None: leave as is). The seed network's tensors
    are tiny: one thread does them as fast, and on a shared machine an intra-op thread pool that
    waits for a busy core turns a 0.2 ms step into 50 ms (gradcheck: 0.1 s -> 15 s)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _to_py(x):
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def _int(value, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if value < minimum:
        raise ConfigError(f"{key}={int(value)}: must be >= {minimum}")
    return int(value)


def _bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    return value


def dtype_of(name, key: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"{key}={name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def tolerance_for(tol64: float, dtype: torch.dtype) -> float:
    """The pass threshold for `dtype`: the same share of significant digits as tol64 in float64,
    tol_d = eps_d ** (log tol64 / log eps_64)  (1e-10 -> float32 3.8e-5, float16 1.2e-2)."""
    if dtype == torch.float64:
        return tol64
    return torch.finfo(dtype).eps ** (math.log(tol64) / math.log(EPS64))


def _activation(name, key: str) -> str:
    if name not in ACTIVATIONS:
        raise ConfigError(f"{key}={name!r}: expected one of {', '.join(ACTIVATIONS)}")
    return name


def _layers(net: dict) -> tuple[list[int], list[bool] | bool, str]:
    """(filters, bias, activation) from `net.filters` or the layer list `net.layers`."""
    if net.get("filters") is not None and net.get("layers") is not None:
        raise ConfigError("net.filters and net.layers are both set: give one, the other null "
                          "(e.g. net.filters=null 'net.layers=[{f:5},{f:3}]')")
    act = net.get("activation")
    if net.get("layers") is None:
        filters = net.get("filters")
        if not isinstance(filters, list) or not filters:
            raise ConfigError(f"net.filters={filters!r}: expected a non-empty list of filter sizes")
        fs = [_int(f, f"net.filters[{i}]") for i, f in enumerate(filters)]
        bias = net.get("bias", True)
        if isinstance(bias, list):
            if len(bias) != len(fs):
                raise ConfigError(f"net.bias={bias}: expected {len(fs)} flags, one per layer")
            bias = [_bool(b, f"net.bias[{i}]") for i, b in enumerate(bias)]
        else:
            bias = _bool(bias, "net.bias")
        return fs, bias, _activation(act, "net.activation")
    layers = net["layers"]
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"net.layers={layers!r}: expected a non-empty list of {{f: ...}}")
    default_bias = _bool(net.get("bias", True), "net.bias")
    fs, bias, hidden = [], [], {}
    for i, layer in enumerate(layers):
        key = f"net.layers[{i}]"
        if not isinstance(layer, dict) or "f" not in layer:
            raise ConfigError(f"{key}={layer!r}: expected {{f: <filter size>, bias: .., "
                              f"activation: ..}}")
        extra = set(layer) - LAYER_KEYS
        if extra:
            raise ConfigError(f"{key}.{min(extra)}: unknown key (known: f, bias, activation)")
        fs.append(_int(layer["f"], f"{key}.f"))
        bias.append(_bool(layer.get("bias", default_bias), f"{key}.bias"))
        a = layer.get("activation")
        if i == len(layers) - 1:  # seed 4: y_L = A_{w_L} y_{L-1} + b_L 1, no sigma
            if a not in (None, "identity"):
                raise ConfigError(f"{key}.activation={a!r}: the seed's last layer is linear "
                                  f"(y_L = A y_(L-1) + b); leave it out or write identity")
        elif a is not None:
            hidden[f"{key}.activation"] = _activation(a, f"{key}.activation")
    for k, a in hidden.items():  # one sigma for all hidden layers (seed 4)
        if act is None:
            act = a
        if a != act:
            first = "net.activation" if net.get("activation") is not None else next(iter(hidden))
            raise ConfigError(f"{k}={a!r} but {first}={act!r}: the seed network has one sigma "
                              f"for all its hidden layers")
    if act is None:
        raise ConfigError("net.activation=None: set it, or an activation in net.layers")
    return fs, bias, _activation(act, "net.activation")


def net_spec(net) -> SeedNetSpec:
    """The seed network of the `net` config; bad keys raise ConfigError, a filter longer than
    its input ShapeError naming the layer (and its config key)."""
    net = _to_py(net) or {}
    n0 = _int(net.get("n0"), "net.n0")
    filters, bias, act = _layers(net)
    key = "net.filters[{}]" if net.get("layers") is None else "net.layers[{}].f"
    n = n0
    for l, f in enumerate(filters, start=1):
        if f > n:  # seed 4: n_l = n_{l-1} - f_l + 1 >= 1
            raise ShapeError(f"{key.format(l - 1)} (layer {l}): filter size f={f} > its input "
                             f"length n_{l - 1}={n} (net.n0={n0})")
        n -= f - 1
    return SeedNetSpec(n0=n0, filters=filters, activation=act, bias=bias)


@dataclass
class RealNet:
    name: str
    input_shape: list[int]
    dtype: torch.dtype
    key: str  # real_nets[i]


def real_nets_of(cfg) -> list[RealNet]:
    import torchvision

    nets = _to_py(cfg.get("real_nets")) or []
    if not isinstance(nets, list):
        raise ConfigError(f"real_nets={nets!r}: expected a list of {{name, input_shape}}")
    out = []
    for i, e in enumerate(nets):
        key = f"real_nets[{i}]"
        if not isinstance(e, dict) or "name" not in e or "input_shape" not in e:
            raise ConfigError(f"{key}={e!r}: expected {{name: resnet18, input_shape: [2,3,64,64]}}")
        builder = getattr(torchvision.models, str(e["name"]), None)
        if not callable(builder) or isinstance(builder, type) or str(e["name"]).startswith("_"):
            raise ConfigError(f"{key}.name={e['name']!r}: not a torchvision model builder")
        shape = e["input_shape"]
        if not isinstance(shape, list) or not shape:
            raise ConfigError(f"{key}.input_shape={shape!r}: expected a list of ints")
        shape = [_int(s, f"{key}.input_shape[{j}]") for j, s in enumerate(shape)]
        out.append(RealNet(str(e["name"]), shape, dtype_of(e.get("dtype", "float64"),
                                                           f"{key}.dtype"), key))
    return out


@dataclass
class ScalingPlan:
    ns: list[int]
    filters: list[int]
    activation: str
    batch: int
    dtype: torch.dtype
    repeats: int
    max_matrix_bytes: float
    threads: int | None
    device: str


def scaling_plan(cfg, activation: str) -> ScalingPlan | None:
    sc = _to_py(cfg.get("scaling")) or {}
    if not _bool(sc.get("enabled", True), "scaling.enabled"):
        return None
    lo = _int(sc.get("n_min_log2"), "scaling.n_min_log2", 0)
    hi = _int(sc.get("n_max_log2"), "scaling.n_max_log2", 0)
    if lo > hi:
        raise ConfigError(f"scaling.n_min_log2={lo} > scaling.n_max_log2={hi}")
    if hi > 24:
        raise ConfigError(f"scaling.n_max_log2={hi}: at most 24 (n = 16M)")
    filters = sc.get("filters")
    if not isinstance(filters, list) or not filters:
        raise ConfigError(f"scaling.filters={filters!r}: expected a non-empty list of ints")
    filters = [_int(f, f"scaling.filters[{i}]") for i, f in enumerate(filters)]
    need = sum(f - 1 for f in filters) + 1
    if 2**lo < need:
        raise ShapeError(f"scaling.n_min_log2={lo}: n=2^{lo}={2**lo} is shorter than the "
                         f"filters {filters} need (n >= {need})")
    act = _activation(sc.get("activation") or activation, "scaling.activation")
    mmb = sc.get("max_matrix_bytes", 2e9)
    if isinstance(mmb, bool) or not isinstance(mmb, (int, float)) or mmb <= 0:
        raise ConfigError(f"scaling.max_matrix_bytes={mmb!r}: expected a positive number")
    threads = sc.get("threads")
    threads = None if threads is None else _int(threads, "scaling.threads")
    device = str(sc.get("device", "cpu"))
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise ConfigError(f"scaling.device={device!r}: expected cpu"
                          + (" or cuda" if torch.cuda.is_available() else " (no CUDA here)"))
    return ScalingPlan([2**k for k in range(lo, hi + 1)], filters, act,
                       _int(sc.get("batch", 1), "scaling.batch"),
                       dtype_of(sc.get("dtype", "float32"), "scaling.dtype"),
                       _int(sc.get("repeats", 3), "scaling.repeats"), float(mmb), threads, device)


@dataclass
class Plan:
    spec: SeedNetSpec
    batch: int
    dtype: torch.dtype
    seed: int
    methods: list[str]
    tol64: float
    tol: float
    gradcheck: bool
    real_nets: list[RealNet]
    scaling: ScalingPlan | None


def plan_of(cfg: DictConfig) -> Plan:
    """Check the whole config first, so that a bad key fails in a second, not after minutes."""
    spec = net_spec(cfg.get("net"))
    dtype = dtype_of(cfg.get("dtype", "float64"))
    methods = _to_py(cfg.get("methods", list(METHODS)))
    if isinstance(methods, list):
        methods = list(dict.fromkeys(methods))  # each method once
    if not isinstance(methods, list) or len(methods) < 2:
        raise ConfigError(f"methods={methods!r}: expected at least two of {', '.join(METHODS)}")
    for i, m in enumerate(methods):
        if m not in METHODS:
            raise ConfigError(f"methods[{i}]={m!r}: expected one of {', '.join(METHODS)}")
    tol64 = cfg.get("tolerance", 1e-10)
    if isinstance(tol64, bool) or not isinstance(tol64, (int, float)) or not 0 < tol64 < 1:
        raise ConfigError(f"tolerance={tol64!r}: expected a number in (0, 1)")
    batch, seed = _int(cfg.get("batch", 4), "batch"), _int(cfg.get("seed", 0), "seed", 0)
    return Plan(spec, batch, dtype, seed, methods, float(tol64), tolerance_for(float(tol64), dtype),
                _bool(cfg.get("gradcheck", True), "gradcheck"), real_nets_of(cfg),
                scaling_plan(cfg, spec.activation))


# ----------------------------------------------------------------------------------------------
# 1. the seed network, by every method


def _sigma(spec: SeedNetSpec):
    return ACTIVATIONS[spec.activation][0]


def grads_dnnlab(spec: SeedNetSpec, params, y0: torch.Tensor, u: torch.Tensor | None = None):
    """The seed network built from dnnlab.nn.Conv1d (1 channel), gradients by its hand-written
    backward (seed 4b): the layer a user would put in a model."""
    sigma = _sigma(spec)
    layers = []
    for w, b in params:
        conv = Conv1d(1, 1, w.numel(), bias=b is not None, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w.view(1, 1, -1))
            if b is not None:
                conv.bias.copy_(b.view(1))
        layers.append(conv)
    with torch.enable_grad():
        y = y0[:, None]  # (B, 1, n_0)
        for l, conv in enumerate(layers, start=1):
            z = conv(y)  # seed 4b: A_{w_l} y_{l-1} + b_l 1 as a convolution
            y = sigma(z) if l < spec.depth else z
        u = torch.ones_like(y[:, 0]) if u is None else u
        J = (u * y[:, 0]).sum()  # J = sum_b <u_b, y_L,b>
        leaves = [p for c in layers for p in (c.weight, c.bias) if p is not None]
        grads = torch.autograd.grad(J, leaves)
    out, it = {"y": y[:, 0].detach()}, iter(grads)
    for l, c in enumerate(layers, start=1):
        out[f"w{l}"] = next(it).view(-1)
        if c.bias is not None:
            out[f"b{l}"] = next(it).view(())
    return out


METHODS = {**SEED_METHODS, "dnnlab": grads_dnnlab}


def formula(param: str) -> str:
    """The seed's formula (4a) for a parameter's gradient: w2 -> C_(v_2^T) y_1, b2 -> v_2 . 1."""
    if param == "y":
        return "y_L (forward)"
    l = int(param[1:])
    return f"C_(v_{l}^T) y_{l - 1}" if param[0] == "w" else f"v_{l} . 1"


def _passes(abs_err: float, rel_err: float, tol: float) -> bool:
    return abs_err <= tol or rel_err <= tol  # NaN fails both


def seed_inputs(p: Plan):
    """Parameters (w_l ~ N(0, 1/f_l), b_l ~ N(0, 0.01)), inputs y_0 and cotangent u."""
    params = init_params(p.spec, p.seed, p.dtype)
    g = torch.Generator().manual_seed(p.seed + 1)
    y0 = torch.randn(p.batch, p.spec.n0, generator=g, dtype=torch.float64).to(p.dtype)
    u = torch.randn(p.batch, p.spec.sizes()[-1], generator=g, dtype=torch.float64).to(p.dtype)
    return params, y0, u


def check_seed(p: Plan) -> dict:
    """Every method's y_L and gradients; every pair compared (the first method of a pair is the
    reference of its relative error)."""
    params, y0, u = seed_inputs(p)
    grads, seconds = {}, {}
    for m in p.methods:
        t = time.perf_counter()
        with torch.no_grad(), _threads(1):
            grads[m] = {k: v.detach() for k, v in METHODS[m](p.spec, params, y0, u).items()}
        seconds[m] = time.perf_counter() - t
    rows = []
    for a, b in itertools.combinations(p.methods, 2):
        for param in grads[a]:
            abs_err, rel_err = errors(grads[b][param], grads[a][param])
            rows.append({"net": "seed", "a": a, "b": b, "param": param, "max_abs_err": abs_err,
                         "max_rel_err": rel_err, "passed": _passes(abs_err, rel_err, p.tol)})
    scale = {k: v.abs().max().item() for k, v in grads[p.methods[0]].items()}
    return {"comparisons": rows, "seconds": seconds, "scale": scale}


def print_seed_table(p: Plan, res: dict) -> None:
    pairs = list(itertools.combinations(p.methods, 2))
    s = p.spec
    t = Table(title=f"seed net n0={s.n0} f={s.filters} {s.activation} batch={p.batch} "
                    f"{str(p.dtype).removeprefix('torch.')}: max abs / max rel error "
                    f"(pass <= {p.tol:.1e})")
    for col in ("param", "seed 4a", "max |ref|"):
        t.add_column(col, justify="left" if col != "max |ref|" else "right")
    for a, b in pairs:
        t.add_column(f"{a}\nvs {b}", justify="right")
    by = {(r["param"], r["a"], r["b"]): r for r in res["comparisons"]}
    for param, scale in res["scale"].items():
        cells = []
        for a, b in pairs:
            r = by[(param, a, b)]
            txt = f"{r['max_abs_err']:.1e}/{r['max_rel_err']:.1e}"
            cells.append(txt if r["passed"] else f"[red]{txt}[/]")
        t.add_row(param, formula(param), f"{scale:.3g}", *cells)
    console.print(t)


# ----------------------------------------------------------------------------------------------
# 2. torch.autograd.gradcheck through dnnlab's conv Function


def gradcheck_seed(p: Plan) -> dict:
    """gradcheck (float64, finite differences) of y_L w.r.t. y_0 and every w_l, b_l, the network
    run through ConvNdFunction (our backward), in both weight-gradient modes."""
    s = p.spec
    n0 = max(min(s.n0, 24), sum(f - 1 for f in s.filters) + 4)
    spec = SeedNetSpec(n0=n0, filters=s.filters, activation=s.activation, bias=s.bias)
    batch = min(p.batch, 2)
    params = init_params(spec, p.seed, torch.float64)
    g = torch.Generator().manual_seed(p.seed + 1)
    y0 = torch.randn(batch, n0, generator=g, dtype=torch.float64)
    flat = [y0] + [t for w, b in params for t in (w, b) if t is not None]
    flat = [t.detach().requires_grad_(True) for t in flat]
    layout = [b is not None for _, b in params]
    sigma = _sigma(spec)

    def net(y0, *ps):
        it, y = iter(ps), y0[:, None]
        for l, has_b in enumerate(layout, start=1):
            w = next(it)
            b = next(it).view(1) if has_b else None
            # seed 4b: z_l = A_{w_l} y_{l-1} + b_l 1 by our Function (our backward)
            z = ConvNdFunction.apply(y, w.view(1, 1, -1), b, (1,), (0,), (1,), 1)
            y = sigma(z) if l < spec.depth else z
        return y[:, 0]

    out = {"n0": n0, "batch": batch, "inputs": sum(t.numel() for t in flat), "modes": {},
           "errors": {}}
    t = time.perf_counter()
    for mode in ("aten", "explicit"):
        with weight_grad_mode(mode), _threads(1):
            try:
                ok = torch.autograd.gradcheck(net, flat, eps=1e-6, atol=1e-7, rtol=1e-5)
            except GradcheckError as err:
                ok = False
                out["errors"][mode] = str(err).strip().splitlines()[0]
        out["modes"][mode] = bool(ok)
    out["passed"] = all(out["modes"].values())
    out["seconds"] = time.perf_counter() - t
    return out


# ----------------------------------------------------------------------------------------------
# 3. real networks: swap_convs'd vs native


def _first_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):  # googlenet / inception in train mode
        return out.logits
    return out[0]


def check_real_net(net: RealNet, seed: int, tol64: float) -> dict:
    """Gradients of J = sum <u, output> w.r.t. the input and every parameter, native torch convs
    against dnnlab's (swap_convs, same parameters, same RNG state so dropout masks agree)."""
    import torchvision

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = getattr(torchvision.models, net.name)(weights=None).to(net.dtype).train()
    names, params = zip(*model.named_parameters())
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(net.input_shape, generator=g, dtype=torch.float64).to(net.dtype)
    u = None

    def grads():
        nonlocal u
        torch.manual_seed(seed + 2)
        xi = x.detach().requires_grad_(True)
        out = _first_output(model(xi))
        if u is None:
            u = torch.randn(out.shape, generator=g, dtype=torch.float64).to(net.dtype)
        return torch.autograd.grad(out, (xi,) + params, u, allow_unused=True)

    try:
        native = grads()
    except (RuntimeError, ValueError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ShapeError(f"{net.key} ({net.name}, input_shape={net.input_shape}): {msg}") from None
    swap_convs(model)
    convs = sum(isinstance(m, OUR_CONVS) for m in model.modules())
    ours = grads()
    tol = tolerance_for(tol64, net.dtype)
    rows = []
    for name, a, b in zip(("input",) + names, ours, native):
        if a is None or b is None:
            continue
        abs_err, rel_err = errors(a, b)
        rows.append({"net": net.name, "a": f"{net.name}/dnnlab", "b": f"{net.name}/torch",
                     "param": name, "max_abs_err": abs_err, "max_rel_err": rel_err,
                     "passed": _passes(abs_err, rel_err, tol)})
    worst = max(rows, key=lambda r: r["max_rel_err"])
    summary = {"name": net.name, "input_shape": net.input_shape,
               "dtype": str(net.dtype).removeprefix("torch."), "convs_swapped": convs,
               "params_compared": len(rows), "max_abs_err": max(r["max_abs_err"] for r in rows),
               "max_rel_err": worst["max_rel_err"], "worst_param": worst["param"],
               "tolerance": tol, "passed": all(r["passed"] for r in rows),
               "seconds": time.perf_counter() - t0}
    return {"summary": summary, "comparisons": rows}


def print_real_nets(summaries: list[dict]) -> None:
    t = Table(title="real networks: swap_convs'd (dnnlab) vs native (torch) gradients")
    for col in ("network", "input", "dtype", "convs", "params", "max abs", "max rel", "worst",
                "pass"):
        t.add_column(col, justify="left" if col in ("network", "worst") else "right")
    for s in summaries:
        t.add_row(s["name"], "x".join(map(str, s["input_shape"])), s["dtype"],
                  str(s["convs_swapped"]), str(s["params_compared"]), f"{s['max_abs_err']:.1e}",
                  f"{s['max_rel_err']:.1e}", s["worst_param"],
                  "[green]yes[/]" if s["passed"] else "[red]NO[/]")
    console.print(t)


# ----------------------------------------------------------------------------------------------
# 4. cost: matrix form vs conv form


def _slope(rows: list[dict], key: str, last: int = 2) -> float | None:
    """Least-squares slope of log(time) vs log(n) over the `last` largest measured n (2: the
    local slope at the top of the range, closest to the asymptotic O(n^2) / O(n f))."""
    pts = [(math.log(r["n"]), math.log(r[key])) for r in rows if r.get(key)][-last:]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den


def analyse_scaling(rows: list[dict]) -> dict:
    """Crossover (the smallest n from which the conv form is faster at every measured n), ratios
    and the measured log-log slopes."""
    timed = [r for r in rows if not r["matrix_skipped"]]
    cross = None
    for i, r in enumerate(timed):
        if all(q["matrix_s"] > q["conv_s"] for q in timed[i:]):
            cross = r["n"]
            break
    return {"crossover_n": cross,
            "conv_faster_everywhere": bool(timed) and cross == timed[0]["n"],
            "ratio": {str(r["n"]): r["matrix_s"] / r["conv_s"] for r in timed},
            "matrix_skipped": [r["n"] for r in rows if r["matrix_skipped"]],
            "slopes": {"matrix": _slope(rows, "matrix_s"), "conv": _slope(rows, "conv_s")}}


def crossover_sentence(sc: dict) -> str:
    a, rows = sc["analysis"], sc["rows"]
    timed = [r for r in rows if not r["matrix_skipped"]]
    if not timed:
        return "The matrix form was skipped at every n."
    ratios = ", ".join(f"{r['matrix_s'] / r['conv_s']:.3g}x at 2^{r['n'].bit_length() - 1}"
                       for r in timed)
    if a["crossover_n"] is None:
        head = "The matrix form stayed faster at some n up to the largest measured"
    elif a["conv_faster_everywhere"]:
        head = (f"No crossover in n = 2^{timed[0]['n'].bit_length() - 1} .. "
                f"2^{rows[-1]['n'].bit_length() - 1}: the conv form was faster at every n measured")
    else:
        head = f"The crossover: the conv form is faster from n = {a['crossover_n']}"
    s = a["slopes"]
    slopes = ", ".join(f"{k} n^{v:.2f}" for k, v in s.items() if v is not None)
    skipped = (f"; matrix form skipped at n = {', '.join(map(str, a['matrix_skipped']))} (its "
               f"A_w would exceed {sc['max_matrix_bytes'] / 1e9:.3g} GB)"
               if a["matrix_skipped"] else "")
    return (f"{head} (matrix/conv time: {ratios}); log-log slope between the two largest n: "
            f"{slopes}{skipped}.")


def plot_scaling(sc: dict, path: Path) -> Path:
    rows = sc["rows"]
    ns = [r["n"] for r in rows]
    timed = [r for r in rows if not r["matrix_skipped"]]
    skipped = [r for r in rows if r["matrix_skipped"]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    f = sc["filters"]
    ax.loglog([r["n"] for r in timed], [r["matrix_s"] for r in timed], "o-", c="tab:red",
              label="matrix form (A_w formed)")
    ax.loglog(ns, [r["conv_s"] for r in rows], "s-", c="tab:blue", label="conv form (seed 4b)")
    if timed:  # reference slopes anchored at the largest measured point
        r = timed[-1]
        ax.loglog(ns, [r["matrix_s"] * (n / r["n"]) ** 2 for n in ns], "--", c="tab:red",
                  alpha=0.4, label="O(n^2)")
    r = rows[-1]
    ax.loglog(ns, [r["conv_s"] * n / r["n"] for n in ns], "--", c="tab:blue", alpha=0.4,
              label=f"O(n f), f={f}")
    for r in skipped:
        ax.axvline(r["n"], c="grey", ls=":", lw=1)
    if skipped:
        at = ", ".join(f"2^{r['n'].bit_length() - 1}" for r in skipped)
        ax.text(0.98, 0.02, f"matrix form skipped at n = {at}\n(A_w > "
                f"{sc['max_matrix_bytes'] / 1e9:.3g} GB)", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n = n_0")
    ax.set_ylabel("forward+backward time (s, median)")
    ax.set_title(f"time, {sc['dtype']}, batch {sc['batch']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    bx.loglog([r["n"] for r in timed], [r["matrix_bytes"] for r in timed], "o-", c="tab:red",
              label="matrix form: A_w + activations")
    if skipped:
        bx.loglog([r["n"] for r in skipped], [r["matrix_a_bytes"] for r in skipped], "o",
                  mfc="none", c="tab:red", label="matrix form (skipped): A_w would need")
    bx.loglog(ns, [r["conv_bytes"] for r in rows], "s-", c="tab:blue",
              label="conv form: activations")
    bx.axhline(sc["max_matrix_bytes"], c="grey", ls=":", lw=1, label="skip threshold")
    bx.set_xscale("log", base=2)
    bx.set_xlabel("n = n_0")
    bx.set_ylabel("bytes held after the forward pass")
    bx.set_title("memory")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3, which="both")
    fig.suptitle(f"seed net f={f}: matrix form O(n^2) vs conv form O(n f)")
    return save(fig, path)


def _measure(sp: ScalingPlan, n: int, min_seconds: float = 0.1, max_repeats: int = 25) -> dict:
    """One row of seednet.scaling. Where `repeats` runs take less than min_seconds (small n, a
    fraction of a millisecond each), measure again with more repeats: the median of 3 would be
    at the mercy of one hiccup of a shared machine."""
    kw = {"filters": sp.filters, "activation": sp.activation, "batch": sp.batch,
          "dtype": sp.dtype, "device": sp.device, "max_matrix_bytes": sp.max_matrix_bytes}
    (row,) = scaling([n], repeats=sp.repeats, **kw)
    slowest = max(row["conv_s"], row["matrix_s"] or 0.0)
    more = min(max_repeats, math.ceil(min_seconds / max(slowest, 1e-9)))
    if more > sp.repeats:
        (row,) = scaling([n], repeats=more, **kw)
    row["repeats"] = max(more, sp.repeats)
    return row


def run_scaling(sp: ScalingPlan, on_row=None) -> dict:
    """seednet.scaling one n at a time (so results can be saved as they come), with
    `threads` torch threads (1 by default, see _threads)."""
    dt = str(sp.dtype).removeprefix("torch.")
    sc = {"filters": sp.filters, "activation": sp.activation, "batch": sp.batch, "dtype": dt,
          "repeats": sp.repeats, "max_matrix_bytes": sp.max_matrix_bytes,
          "threads": sp.threads or torch.get_num_threads(), "device": sp.device, "rows": []}
    with _threads(sp.threads):
        for n in sp.ns:
            with _status(f"scaling: n = {n} ..."):
                row = _measure(sp, n)
            sc["rows"].append(row)
            if on_row:
                on_row(sc, row)
    sc["analysis"] = analyse_scaling(sc["rows"])
    return sc


def scaling_table_rows(sc: dict) -> list[list]:
    out = []
    for r in sc["rows"]:
        sk = r["matrix_skipped"]
        out.append([r["n"], None if sk else r["matrix_s"], r["conv_s"],
                    None if sk else r["matrix_s"] / r["conv_s"], r["matrix_a_bytes"],
                    r["matrix_bytes"], r["conv_bytes"], sk])
    return out


SCALING_COLS = ["n", "matrix_s", "conv_s", "matrix_over_conv", "matrix_a_bytes", "matrix_bytes",
                "conv_bytes", "matrix_skipped"]


def print_scaling(sc: dict) -> None:
    t = Table(title=f"forward+backward, matrix form vs conv form (seed net f={sc['filters']}, "
                    f"{sc['activation']}, batch {sc['batch']}, {sc['dtype']})")
    for col in ("n", "matrix ms", "conv ms", "matrix/conv", "A_w", "conv form holds"):
        t.add_column(col, justify="right")
    for r in sc["rows"]:
        sk = r["matrix_skipped"]
        t.add_row(f"2^{r['n'].bit_length() - 1}",
                  "[yellow]skipped[/]" if sk else f"{r['matrix_s'] * 1e3:.3f}",
                  f"{r['conv_s'] * 1e3:.3f}",
                  "-" if sk else f"{r['matrix_s'] / r['conv_s']:.1f}x",
                  f"{r['matrix_a_bytes'] / 2**20:.1f} MiB" + (" (too big)" if sk else ""),
                  f"{r['conv_bytes'] / 2**10:.1f} KiB")
    console.print(t)
    console.print(crossover_sentence(sc), highlight=False)


# ----------------------------------------------------------------------------------------------
# the job


def _pair_summary(rows: list[dict]) -> dict[str, dict]:
    """Max errors per method pair over all parameters: {"matrix-conv": {...}, ...}."""
    out: dict[str, dict] = {}
    for r in rows:
        k = f"{r['a']}-{r['b']}"
        s = out.setdefault(k, {"max_abs_err": 0.0, "max_rel_err": 0.0, "passed": True})
        s["max_abs_err"] = max(s["max_abs_err"], r["max_abs_err"])
        s["max_rel_err"] = max(s["max_rel_err"], r["max_rel_err"])
        s["passed"] &= r["passed"]
    return out


def _net_info(p: Plan) -> dict:
    s = p.spec
    return {"n0": s.n0, "filters": s.filters, "activation": s.activation,
            "bias": [s.has_bias(l) for l in range(1, s.depth + 1)], "sizes": s.sizes(),
            "depth": s.depth}


def job(cfg: DictConfig, tracker: Tracker) -> dict:
    p = plan_of(cfg)
    R = tracker.results
    R.update(net=_net_info(p), dtype=str(p.dtype).removeprefix("torch."), batch=p.batch,
             methods=p.methods, tolerance=p.tol, tolerance_float64=p.tol64, complete=False,
             passed=None, comparisons=[])
    checks = {}

    # 1. the seed network, every pair of methods
    seed = check_seed(p)
    R["comparisons"] = seed["comparisons"]
    R["pairs"] = _pair_summary(seed["comparisons"])
    R["method_seconds"] = seed["seconds"]
    checks["seed"] = all(r["passed"] for r in seed["comparisons"])
    tracker.save()
    print_seed_table(p, seed)
    for k, v in R["pairs"].items():
        tracker.summary(**{f"seed/{k}/max_abs_err": v["max_abs_err"],
                           f"seed/{k}/max_rel_err": v["max_rel_err"]})

    # 2. gradcheck through our Function
    if p.gradcheck:
        with _status("torch.autograd.gradcheck ..."):
            gc = gradcheck_seed(p)
        R["gradcheck"] = {"enabled": True, **gc}
        checks["gradcheck"] = gc["passed"]
        console.print(f"gradcheck (float64, n0={gc['n0']}, batch {gc['batch']}, "
                      f"{gc['inputs']} inputs) through dnnlab's conv Function: "
                      + ", ".join(f"{m} {'[green]passed[/]' if ok else '[red]FAILED[/]'}"
                                  for m, ok in gc["modes"].items()))
        tracker.summary(**{"gradcheck/passed": gc["passed"]})
    else:
        R["gradcheck"] = {"enabled": False}
        tracker.save()

    # 3. real networks
    R["real_nets"] = []
    for net in p.real_nets:
        with _status(f"{net.name} {net.input_shape}: native vs swap_convs ..."):
            res = check_real_net(net, p.seed, p.tol64)
        R["real_nets"].append(res["summary"])
        R["comparisons"] = R["comparisons"] + res["comparisons"]
        checks[net.name] = res["summary"]["passed"]
        tracker.summary(**{f"real/{net.name}/max_abs_err": res["summary"]["max_abs_err"],
                           f"real/{net.name}/max_rel_err": res["summary"]["max_rel_err"]})
    if p.real_nets:
        print_real_nets(R["real_nets"])
        tracker.table("real_nets", ["net", "param", "max_abs_err", "max_rel_err", "passed"],
                      [[r["net"], r["param"], r["max_abs_err"], r["max_rel_err"], r["passed"]]
                       for r in R["comparisons"] if r["net"] != "seed"])
    tracker.table("comparisons", ["net", "a", "b", "param", "max_abs_err", "max_rel_err",
                                  "passed"],
                  [[r[c] for c in ("net", "a", "b", "param", "max_abs_err", "max_rel_err",
                                   "passed")] for r in R["comparisons"]])

    # 4. cost of the two forms
    if p.scaling is not None:
        def on_row(sc, row):
            R["scaling"] = {"enabled": True, **sc}
            metrics = {"scaling/n": row["n"], "scaling/conv_s": row["conv_s"]}
            if not row["matrix_skipped"]:
                metrics["scaling/matrix_s"] = row["matrix_s"]
            tracker.log(metrics)
            tracker.save()

        sc = run_scaling(p.scaling, on_row)
        png = plot_scaling(sc, tracker.run_dir / "scaling.png")
        sc["plot"] = png.name
        R["scaling"] = {"enabled": True, **sc}
        print_scaling(sc)
        tracker.table("scaling", SCALING_COLS, scaling_table_rows(sc))
        tracker.image("scaling_plot", png, caption=crossover_sentence(sc))
        tracker.summary(**{"scaling/crossover_n": sc["analysis"]["crossover_n"],
                           "scaling/matrix_skipped": sc["analysis"]["matrix_skipped"]})
    else:
        R["scaling"] = {"enabled": False}

    passed = all(checks.values())
    R["checks"] = checks
    R["complete"] = True
    tracker.summary(passed=passed)
    verdict = "[green]PASSED[/]" if passed else "[red]FAILED[/]"
    console.print(f"grad_check {verdict}: " + ", ".join(
        f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    console.print(f"results: {tracker.run_dir / 'results.json'}")
    if not passed and cfg.get("fail_on_mismatch", True):
        bad = [r for r in R["comparisons"] if not r["passed"]]
        first = (f"first: {bad[0]['a']} vs {bad[0]['b']} {bad[0]['param']} abs "
                 f"{bad[0]['max_abs_err']:.2e} rel {bad[0]['max_rel_err']:.2e}" if bad else
                 f"gradcheck: {R['gradcheck'].get('errors')}")
        raise DnnlabError(f"grad_check failed ({', '.join(k for k, v in checks.items() if not v)}"
                          f"; tolerance {p.tol:.1e}): {first}")
    return R


@hydra.main(version_base="1.3", config_path="../conf", config_name="grad_check")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg, "grad_check", job)


# ----------------------------------------------------------------------------------------------
# the main job's report


REPORT_OVERRIDES = [  # fast: < 20 s on 2 CPU cores
    "scaling.n_min_log2=3",  # n = 8: where a crossover would be, if the matrix form ever won
    "scaling.n_max_log2=12",
    "real_nets=[{name:resnet18,input_shape:[2,3,32,32]},{name:alexnet,input_shape:[1,3,64,64]}]",
]


def report_section(cfg: DictConfig, out: Path, tracker: Tracker) -> str:
    """The report's section for seed problem 4: the formulas checked, real nets, the cost."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():  # pragma: no cover - called under Hydra
        raise RuntimeError("report_section needs Hydra")
    extra = list((cfg.get("conv_backprop") or {}).get("overrides", []) or [])
    sub = compose(config_name="grad_check", overrides=REPORT_OVERRIDES + extra)
    p = plan_of(sub)
    seed = check_seed(p)
    print_seed_table(p, seed)
    gc = gradcheck_seed(p) if p.gradcheck else None
    real = [check_real_net(n, p.seed, p.tol64) for n in p.real_nets]
    if real:
        print_real_nets([r["summary"] for r in real])
    sc = run_scaling(p.scaling) if p.scaling else None
    if sc:
        print_scaling(sc)
        png = plot_scaling(sc, out / "conv_scaling.png")
        tracker.image("conv/scaling", png, caption=crossover_sentence(sc))

    s, pairs = p.spec, list(itertools.combinations(p.methods, 2))
    by = {(r["param"], r["a"], r["b"]): r for r in seed["comparisons"]}
    ok_seed = all(r["passed"] for r in seed["comparisons"])
    lines = ["\n## 4. Convolution backprop (seed problem 4)\n",
             ("Seed 4a: for y_l = sigma(A_{w_l} y_{l-1} + b_l 1) (l < L), y_L = A_{w_L} y_{L-1} + "
             "b_L 1, with v_l = dy_L/dy_l * sigma'(A_{w_l} y_{l-1} + b_l 1): "
             "**dy_L/dw_l = C_{v_l^T} y_{l-1}**, **dy_L/db_l = v_l . 1**, dy_L/dy_{l-1} = "
             "A_{w_l}^T v_l. Seed 4b: the same by convolution forward and transposed convolution "
             "backward, A_w never formed. The vector y_L is reduced with a random cotangent u "
             "(J = sum <u, y_L>), so each method gives u^T dy_L/dw_l and u^T dy_L/db_l.\n"),
             (f"Checked on n_0 = {s.n0}, f = {s.filters}, sigma = {s.activation}, batch "
             f"{p.batch}, {str(p.dtype).removeprefix('torch.')}; methods: matrix (A_w and C_(v^T) formed), conv (seed 4b), autograd (torch "
             f"through conv1d), dnnlab (our Conv1d's hand-written backward). Max abs / max rel "
             f"error (rel: / max |first method|); pass <= {p.tol:.0e}: "
             f"**{'all pass' if ok_seed else 'FAILED'}**.\n"),
             "| param | seed 4a | " + " | ".join(f"{a} vs {b}" for a, b in pairs) + " |",
             "|---|---|" + "---|" * len(pairs)]
    for param in seed["scale"]:
        cells = [by[(param, a, b)] for a, b in pairs]
        lines.append(f"| {param} | {formula(param)} | " + " | ".join(
            f"{c['max_abs_err']:.1e} / {c['max_rel_err']:.1e}" for c in cells) + " |")
    if gc:
        lines.append(f"\ntorch.autograd.gradcheck (float64, n_0 = {gc['n0']}, batch "
                     f"{gc['batch']}) through dnnlab's conv Function: " + ", ".join(
                         f"weight grad {m}: {'passed' if ok else 'FAILED'}"
                         for m, ok in gc["modes"].items()) + ".\n")
    if real:
        lines += [("Real networks (torchvision, weights=None, train mode): every parameter's "
                  "and the input's gradient with `swap_convs` against the native network.\n"),
                  ("| network | input | convs swapped | gradients compared | max abs | max rel | "
                  "pass |"), "|---|---|---|---|---|---|---|"]
        for r in real:
            q = r["summary"]
            lines.append(f"| {q['name']} | {'x'.join(map(str, q['input_shape']))} {q['dtype']} | "
                         f"{q['convs_swapped']} | {q['params_compared']} | "
                         f"{q['max_abs_err']:.1e} | {q['max_rel_err']:.1e} | "
                         f"{'yes' if q['passed'] else 'NO'} |")
        if all(r["summary"]["max_abs_err"] == 0 for r in real):
            lines.append("\nThe gradients agree to the last bit (error 0.0).")
    if sc:
        lines += [(f"\nCost of forward+backward ({sc['dtype']}, f = {sc['filters']}, batch "
                  f"{sc['batch']}, {sc['threads']} thread(s), median of >= {sc['repeats']} "
                  f"runs):\n"),
                  "| n | matrix ms | conv ms | matrix/conv | A_w bytes |", "|---|---|---|---|---|"]
        for r in sc["rows"]:
            sk = r["matrix_skipped"]
            mat = "skipped" if sk else f"{r['matrix_s'] * 1e3:.3f}"
            ratio = "-" if sk else f"{r['matrix_s'] / r['conv_s']:.1f}x"
            lines.append(f"| 2^{r['n'].bit_length() - 1} | {mat} | {r['conv_s'] * 1e3:.3f} | "
                         f"{ratio} | {r['matrix_a_bytes']:,} |")
        lines += [f"\n![matrix vs conv form]({png.name})\n", crossover_sentence(sc) + "\n"]
    passed = ok_seed and (gc is None or gc["passed"]) and all(r["summary"]["passed"] for r in real)
    tracker.summary(**{"conv/passed": passed,
                       **{f"conv/{k}/max_abs_err": v["max_abs_err"]
                          for k, v in _pair_summary(seed["comparisons"]).items()},
                       **({"conv/crossover_n": sc["analysis"]["crossover_n"]} if sc else {})})
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from dnnlab.cli import launch

    launch("pipelines.grad_check")
