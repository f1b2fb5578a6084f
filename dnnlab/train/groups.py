"""Seeds as replicates: a sweep's finished jobs grouped by every swept key but the seed, each
metric's mean, standard deviation and Student-t 95% interval on the mean, and Welch's t-test
between groups adjacent along the swept numeric key (beta first). The statistics are scipy's.

    groups = group_jobs(jobs)           # jobs: dnnlab.run.train_sweep.collect's rows
    tests = compare_adjacent(groups)    # [{"from", "to", "metric", "diff", "p", "significant"}]
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from dnnlab.core.beta import to_float
from dnnlab.core.errors import ConfigError

METRICS = ("test_accuracy", "best_val_accuracy", "grad_entropy", "argmax_mass")
REPLICATE = "seed"  # the key whose values are replicates, not settings
AXES = ("model.pool.beta",)  # the preferred axis of the comparisons, then any numeric key
ALPHA = 0.05


def parse_value(text: str) -> Any:
    """An override's value as JSON would hold it: 2 -> 2, 0.5 -> 0.5, inf and words as text."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else text
    return text


def override_values(jobs: list[dict]) -> dict[str, list[str]]:
    """{key: [its override value in each job that sets it, in job order]}."""
    values: dict[str, list[str]] = {}
    for r in jobs:
        for o in r["overrides"]:
            key, _, value = str(o).partition("=")
            values.setdefault(key.lstrip("+~"), []).append(value)
    return values


def swept(jobs: list[dict]) -> list[str]:
    """The keys whose override values differ between the jobs (or that some jobs lack)."""
    return [k for k, v in override_values(jobs).items()
            if len(v) != len(jobs) or len(set(v)) > 1]


def group_key(job: dict, keys: list[str]) -> dict[str, Any]:
    """{swept key: value} of a job, the replicate key left out."""
    given = {k.lstrip("+~"): v for k, _, v in (str(o).partition("=") for o in job["overrides"])}
    return {k: parse_value(given[k]) if k in given else None for k in keys if k != REPLICATE}


def describe(values: list[float]) -> dict[str, Any]:
    """mean, std (ddof 1) and the Student-t 95% interval on the mean; None where n < 2."""
    a = np.asarray(values, dtype=float)
    n, mean = len(a), float(a.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None}
    std, sem = float(a.std(ddof=1)), float(stats.sem(a))
    lo, hi = (mean, mean) if sem == 0 else stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
    return {"mean": mean, "std": std, "ci95": [float(lo), float(hi)]}


def group_jobs(jobs: list[dict], keys: list[str] | None = None) -> list[dict]:
    """The finished jobs grouped by `keys` (default: the swept keys) but the seed:
    [{"key", "n", "jobs", "seeds", "metrics": {name: {mean, std, ci95}}}], in first-job order."""
    keys = swept(jobs) if keys is None else keys
    groups: dict[str, dict] = {}
    for r in jobs:
        if r["status"] != "done":
            continue
        key = group_key(r, keys)
        g = groups.setdefault(repr(sorted(key.items(), key=str)),
                              {"key": key, "n": 0, "jobs": [], "seeds": [], "values": {}})
        g["n"] += 1
        g["jobs"].append(r["job"])
        g["seeds"].append(r.get("seed"))
        for m in METRICS:
            if isinstance(r.get(m), (int, float)):
                g["values"].setdefault(m, []).append(float(r[m]))
    out = []
    for g in groups.values():
        values = g.pop("values")
        out.append(g | {"metrics": {m: describe(v) | {"n": len(v)} for m, v in values.items()}})
    return out


def _numeric(value: Any) -> float | None:
    try:
        return to_float(value)
    except ConfigError:
        return None


def axis_of(groups: list[dict]) -> str | None:
    """The key the groups are compared along: beta if swept, else the first numeric key."""
    keys = [k for k in (groups[0]["key"] if groups else {})]
    numeric = [k for k in keys if all(_numeric(g["key"][k]) is not None for g in groups)]
    return next((k for k in AXES if k in numeric), numeric[0] if numeric else None)


def welch(a: list[float], b: list[float]) -> float | None:
    """Welch's two-sided p-value (scipy.stats.ttest_ind, equal_var=False); None when either
    side has fewer than 2 values or neither has any spread."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return None if math.isnan(p) else float(p)


def compare_adjacent(groups: list[dict], jobs: list[dict],
                     metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Welch's t-test between groups next to each other along `axis_of(groups)` (those equal
    in every other key): {"axis", "from", "to", "metric", "diff" (to - from), "p",
    "significant" (p < 0.05; None when the test cannot be made)}."""
    axis = axis_of(groups)
    if axis is None:
        return []
    by_job = {r["job"]: r for r in jobs}
    rest = lambda g: repr(sorted(((k, v) for k, v in g["key"].items() if k != axis),  # noqa: E731
                                 key=str))
    lines: dict[str, list[dict]] = {}
    for g in groups:
        lines.setdefault(rest(g), []).append(g)
    out = []
    for line in lines.values():
        line.sort(key=lambda g: _numeric(g["key"][axis]))
        for a, b in zip(line, line[1:]):
            for m in metrics:
                va = [float(by_job[j][m]) for j in a["jobs"] if by_job[j].get(m) is not None]
                vb = [float(by_job[j][m]) for j in b["jobs"] if by_job[j].get(m) is not None]
                if not va or not vb:
                    continue
                p = welch(va, vb)
                out.append({"axis": axis, "from": a["key"], "to": b["key"], "metric": m,
                            "diff": float(np.mean(vb) - np.mean(va)), "p": p,
                            "significant": None if p is None else p < ALPHA})
    return out
