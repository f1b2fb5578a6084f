"""pipelines.smoothmax as a user runs it: results.json, rows.csv, the PNGs and the W&B run
(offline, read back from disk); a multirun's jobs in one group; bad values as one line."""
from __future__ import annotations

import json

import pytest

from tests.conftest import is_png
from tests.wandb_reader import find_runs, summarize

SMALL = ["n=50", "beta.num=7"]  # betas 1e-3, 10^-1.5, ..., 1e6 and inf


def test_end_to_end(pipeline, tmp_path):
    out = tmp_path / "run"
    proc = pipeline("smoothmax", *SMALL, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["all_bounds_hold"] is True and res["n"] == 50 and res["dtype"] == "float32"
    assert len(res["betas"]) == 8 and res["betas"][-1] == "inf"
    assert len(res["rows"]) == 8 * 6 and set(res["grad1_softmax_err"]) == set(res["inputs"])
    for r in res["rows"]:
        for key in ("input", "beta", "n", "gap", "bound", "holds", "grad_onehot_dist",
                    "grad_entropy", "grad_err_autograd", "hessian_err", "hessian_norm"):
            assert key in r
    inf_rows = [r for r in res["rows"] if r["beta"] == "inf"]
    assert len(inf_rows) == 6
    assert all(r["gap"] == 0 and r["bound"] == 0 and r["grad_onehot_dist"] == 0 for r in inf_rows)
    assert max(res["grad1_softmax_err"].values()) < 1e-6
    assert res["hessian_holds"] is True and res["max_hessian_err"] < 1e-9  # docs/math.md (1d)
    for png in ("gap_vs_beta.png", "grad_vs_beta.png", "hessian_vs_beta.png",
                "softmax_weights.png"):
        assert is_png(out / png)
    assert len((out / "rows.csv").read_text().splitlines()) == 1 + 8 * 6
    assert "smooth max limits" in proc.stdout and "onehot_gap" in proc.stdout
    (run,) = find_runs(out)
    w = summarize(run)
    assert w["run"].job_type == "smoothmax" and w["config"]["n"] == 50
    assert w["summary"]["all_bounds_hold"] is True
    assert w["summary"]["worst_gap_bound_ratio"] == pytest.approx(res["worst_gap_bound_ratio"])
    assert any("gap/normal" in h and "log10_beta" in h for h in w["history"])
    assert any("gap_vs_beta/_type" in h for h in w["history"])  # the image


@pytest.mark.slow
def test_multirun_groups_jobs(pipeline, tmp_path):
    sweep = tmp_path / "sweep"
    proc = pipeline("smoothmax", "n=10,100", "beta.num=4", f"hydra.sweep.dir={sweep}",
                    multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups, ns = set(), set()
    for job in ("0", "1"):
        res = json.loads((sweep / job / "results.json").read_text())
        ns.add(res["n"])
        (run,) = find_runs(sweep / job)
        w = summarize(run)
        groups.add(w["run"].run_group)
        assert w["config"]["n"] == res["n"] and w["summary"]["all_bounds_hold"] is True
    assert ns == {10, 100}
    assert len(groups) == 1 and groups.pop().startswith("smoothmax-")


SLOW = pytest.mark.slow  # the same paths as the first two (exit 1: a check; exit 2: a type)


@pytest.mark.parametrize("override,starts", [
    ("n=0", "error: n=0:"), ("inputs=[nope]", "error: inputs[0]:"),
    pytest.param("dtype=int8", "error: dtype:", marks=SLOW),
    pytest.param("beta.min=0", "error: beta.min=0.0:", marks=SLOW),
    pytest.param("beta.max=1e-4", "error: beta.max=0.0001:", marks=SLOW)])
def test_bad_value_is_one_line(pipeline, tmp_path, override, starts):
    proc = pipeline("smoothmax", override, f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(starts) and "Traceback" not in proc.stderr
