"""What the two forms of the chain cost as n grows: the matrix form (A_w formed, O(n^2) time and
memory) against the conv form (docs/math.md (3b), O(n f)), forward+backward.

    rows = [measure_row(n, ScalingSettings()) for n in (64, 128)]
    analysis = analyse(rows)         # crossover, ratios, log-log slopes
    crossover_sentence(rows, analysis, max_matrix_bytes=2e9)

Timing goes through dnnlab.core.timing: the two forms of a row in interleaved pairs of short blocks
(paired_ratio), so that the matrix/conv ratio carries its spread (the quartiles of the pairs'
ratios); a form alone (the conv form where the matrix form is skipped) by its median. A
conclusion holds only where the spread does not cover 1: otherwise it says "not resolved".
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dnnlab.conv.chain import METHODS, ChainSpec, forward_conv, forward_matrix, init_params
from dnnlab.core.timing import median_seconds, paired_ratio

FORMS = ("matrix", "conv")


def time_form(fn, repeats: int, threads: int | None = None, min_run_time: float = 0.1) -> float:
    """Median seconds of one call of `fn`, over at least `repeats` timed runs: a first short
    measurement (also the warm-up) estimates one run, the second lasts >= repeats runs."""
    first = median_seconds(fn, min_run_time=0.01, threads=threads)
    return median_seconds(fn, min_run_time=max(min_run_time, repeats * first), threads=threads)


def memory_bytes(form: str, spec: ChainSpec, params, y0, u, device) -> int:
    """On CUDA the peak allocated during one forward+backward (max_memory_allocated); on CPU
    the bytes of the matrices A_w (matrix form) plus the activations each form keeps for its
    backward (y_{l-1}, z_l), i.e. what it holds at the end of the forward pass."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        METHODS[form](spec, params, y0, u)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    forward = {"matrix": forward_matrix, "conv": forward_conv}[form]
    _, cache = forward(spec, params, y0)
    return sum(t.numel() * t.element_size() for ts in cache.values() for t in ts)


def measure_forms(spec: ChainSpec, forms: Sequence[str] = FORMS, batch: int = 1,
                  dtype: torch.dtype = torch.float32, device="cpu", repeats: int = 3,
                  seed: int = 0, threads: int | None = None) -> dict[str, dict[str, float]]:
    """{form: {"time_s": median forward+backward seconds, "memory_bytes": ...}} for `spec`.

    Each form is timed in one block (not interleaved): the matrix form's large allocations
    evict caches and are returned to the OS on free, which would otherwise charge the conv form
    for page faults it does not cause."""
    params = init_params(spec, seed, dtype, device)
    g = torch.Generator().manual_seed(seed + 1)
    y0 = torch.randn(batch, spec.n0, generator=g, dtype=dtype).to(device)  # (B, n_0)
    u = torch.randn(batch, spec.sizes()[-1], generator=g, dtype=dtype).to(device)  # (B, n_L)
    out = {}
    with torch.no_grad():
        for f in forms:
            fn = METHODS[f]
            seconds = time_form(lambda fn=fn: fn(spec, params, y0, u), repeats, threads)
            out[f] = {"time_s": seconds,
                      "memory_bytes": memory_bytes(f, spec, params, y0, u, device)}
    return out


def measure_row(n: int, filters: Sequence[int] = (3, 3, 3), activation: str = "tanh",
                batch: int = 1, dtype: torch.dtype = torch.float32, device="cpu",
                repeats: int = 3, max_matrix_bytes: float = 2e9,
                threads: int | None = None) -> dict:
    """Matrix vs conv form at n_0 = n: {"n", "matrix_s", "conv_s", "matrix_bytes",
    "conv_bytes", "matrix_a_bytes", "matrix_skipped", "repeats"}; the matrix form is skipped
    (None) where its A_w matrices would exceed max_matrix_bytes."""
    spec = ChainSpec(n0=int(n), filters=list(filters), activation=activation)
    itemsize = torch.empty((), dtype=dtype).element_size()
    skip = spec.matrix_bytes(itemsize) > max_matrix_bytes
    forms = ("conv",) if skip else FORMS
    r = measure_forms(spec, forms, batch=batch, dtype=dtype, device=device, repeats=repeats,
                      threads=threads)
    pair = None if skip else _paired(spec, batch, dtype, device, repeats, threads)
    return {
        "n": int(n),
        "matrix_s": None if skip else pair.a,
        "conv_s": r["conv"]["time_s"] if skip else pair.b,
        "ratio": None if skip else pair.ratio,  # matrix / conv: median of the pairs' ratios
        "ratio_low": None if skip else pair.low,  # their quartiles
        "ratio_high": None if skip else pair.high,
        "matrix_bytes": None if skip else r["matrix"]["memory_bytes"],
        "conv_bytes": r["conv"]["memory_bytes"],
        "matrix_a_bytes": spec.matrix_bytes(itemsize),
        "matrix_skipped": skip,
        "repeats": repeats,
    }


def _paired(spec: ChainSpec, batch: int, dtype, device, repeats: int, threads: int | None):
    """The matrix and conv forms' forward+backward timed in interleaved pairs (at least 5)."""
    params = init_params(spec, 0, dtype, device)
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(batch, spec.n0, generator=g, dtype=dtype).to(device)  # (B, n_0)
    u = torch.randn(batch, spec.sizes()[-1], generator=g, dtype=dtype).to(device)  # (B, n_L)
    fm, fc = (lambda f=METHODS[k]: f(spec, params, y0, u) for k in FORMS)
    with torch.no_grad(), _threads(threads):
        return paired_ratio(fm, fc, rounds=max(5, repeats), min_run_time=0.02)


def _threads(n: int | None):
    from dnnlab.core.timing import torch_threads
    return torch_threads(n)


def verdict(row: dict) -> str | None:
    """"conv" (faster: the spread of matrix/conv above 1), "matrix" (below 1), "unresolved"
    (the spread covers 1), None where the matrix form was skipped."""
    if row.get("matrix_skipped"):
        return None
    low = row.get("ratio_low", row["matrix_s"] / row["conv_s"])
    high = row.get("ratio_high", row["matrix_s"] / row["conv_s"])
    return "conv" if low > 1 else "matrix" if high < 1 else "unresolved"


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


def analyse(rows: list[dict]) -> dict:
    """Crossover (the smallest n from which the conv form is faster at every measured n), ratios
    and the measured log-log slopes."""
    timed = [r for r in rows if not r["matrix_skipped"]]
    says = [verdict(r) for r in timed]
    cross = None
    for i, r in enumerate(timed):
        if all(v == "conv" for v in says[i:]) and all(v == "matrix" for v in says[:i]):
            cross = r["n"]
            break
    return {"crossover_n": cross,
            "resolved": "unresolved" not in says,
            "verdicts": {str(r["n"]): v for r, v in zip(timed, says)},
            "conv_faster_everywhere": bool(timed) and cross == timed[0]["n"],
            "ratio": {str(r["n"]): r.get("ratio") or r["matrix_s"] / r["conv_s"]
                      for r in timed},
            "matrix_skipped": [r["n"] for r in rows if r["matrix_skipped"]],
            "slopes": {"matrix": _slope(rows, "matrix_s"), "conv": _slope(rows, "conv_s")}}


def ratio_text(row: dict) -> str:
    """`1.52x [1.41, 1.60]`: matrix/conv with the quartiles of the pairs (when timed so)."""
    if row.get("ratio") is None:
        return f"{row['matrix_s'] / row['conv_s']:.3g}x"
    return f"{row['ratio']:.3g}x [{row['ratio_low']:.3g}, {row['ratio_high']:.3g}]"


def log2_label(n: int) -> str:
    """64 -> '2^6'."""
    return f"2^{n.bit_length() - 1}"


def crossover_sentence(rows: list[dict], analysis: dict, max_matrix_bytes: float) -> str:
    """One sentence: the crossover (or none), the matrix/conv time ratios and the slopes."""
    a = analysis
    timed = [r for r in rows if not r["matrix_skipped"]]
    if not timed:
        return "The matrix form was skipped at every n."
    ratios = ", ".join(f"{ratio_text(r)} at {log2_label(r['n'])}" for r in timed)
    says = [verdict(r) for r in timed]
    if all(v == "matrix" for v in says):
        head = "The matrix form was faster at every n measured"
    elif a["crossover_n"] is None:
        loose = [log2_label(r["n"]) for r, v in zip(timed, says) if v == "unresolved"]
        head = ("Crossover not resolved: the spread of the matrix/conv time covers 1 at n = "
                f"{', '.join(loose)}" if loose else
                "No single crossover: the faster form changes more than once with n")
    elif a["conv_faster_everywhere"]:
        head = (f"No crossover in n = {log2_label(timed[0]['n'])} .. {log2_label(rows[-1]['n'])}"
                f": the conv form was faster at every n measured")
    else:
        head = f"The crossover: the conv form is faster from n = {a['crossover_n']}"
    slopes = ", ".join(f"{k} n^{v:.2f}" for k, v in a["slopes"].items() if v is not None)
    skipped = (f"; matrix form skipped at n = {', '.join(map(str, a['matrix_skipped']))} (its "
               f"A_w would exceed {max_matrix_bytes / 1e9:.3g} GB)" if a["matrix_skipped"] else "")
    return (f"{head} (matrix/conv time, median and quartiles of interleaved pairs: {ratios}); "
            f"log-log slope between the two largest n: "
            f"{slopes}{skipped}.")
