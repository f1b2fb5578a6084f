"""optimization_results.yaml, the search's record in its sweep dir, read from the study: the best
trial (`best_params`, `best_value`, `best_trial`), every trial (number, job, state, params as
the job's overrides, value, the epoch a pruned trial stopped after) and Optuna's parameter
importances (fANOVA, seeded), which need two complete trials at least. The sweep's W&B summary
run logs it (dnnlab.run.train_sweep.log_summary_run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dnnlab.core.errors import first_line
from dnnlab.core.table import jsonable
from hydra_plugins.dnnlab_search.space import typed

OVERRIDES = "dnnlab:overrides"


def trial_params(trial: Any) -> dict[str, Any]:
    """The drawn parameters of a trial as its job got them: {key: value} (typed), `or` choices
    resolved (a `<key>:branch` of inf is `key: inf`)."""
    out = {}
    for ov in trial.user_attrs.get(OVERRIDES) or []:
        key, _, value = ov.partition("=")
        if key.lstrip("+~") in {k.split(":")[0] for k in trial.params}:
            out[key.lstrip("+~")] = typed(value)
    return out


def importances(study: Any) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's parameter importances, or None and why not."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return None, f"{len(done)} complete trial(s): importances need 2 at least"
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        return {k: float(v) for k, v in imp.items()}, None
    except (RuntimeError, ValueError) as err:  # e.g. no parameter varies over the trials
        return None, first_line(err)


def summarize(study: Any) -> dict[str, Any]:
    import optuna

    trials = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        trials.append({
            "number": t.number, "job": t.user_attrs.get("dnnlab:job"), "state": t.state.name,
            "params": trial_params(t), "value": t.value,
            "pruned_at_epoch": steps[-1] if t.state == optuna.trial.TrialState.PRUNED and steps
            else None})
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"] if study.direction.name == "MAXIMIZE"
               else -t["value"], default=None)
    imp, why = importances(study)
    return {"name": "optuna", "study_name": study.study_name,
            "best_params": best["params"] if best else None,
            "best_value": best["value"] if best else None,
            "best_trial": best["number"] if best else None,
            "states": {s: sum(t["state"] == s for t in trials)
                       for s in dict.fromkeys(t["state"] for t in trials)},
            "importances": imp, **({"importances_note": why} if why else {}),
            "trials": trials}


def write_results(study: Any, path: Path) -> dict[str, Any]:
    out = summarize(study)
    tmp = Path(path).with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(jsonable(out), sort_keys=False))
    tmp.replace(path)
    return out
