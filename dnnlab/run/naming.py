"""W&B run names and tags from the rule a pipeline's config declares (`wandb.run_name`,
dnnlab.run.config.RunNameRule): `train-smoothmax_cnn-beta4-epochs=3`, tagged `train`,
`smoothmax_cnn`, the experiment preset."""
from __future__ import annotations

import math
from typing import Any

from dnnlab.run.settings import RunNameRule
from dnnlab.train.settings import SAME_EXPERIMENT

JOB_GROUPS = ("hydra", "wandb", "paths")  # where and how a job runs: never in a run name
NAME_MAX = 100  # characters of a run name
VALUE_MAX = 24  # characters of one override's value in it


def _short(value: Any) -> str:
    """A config value for a run name: 4.0 -> 4, inf -> inf, [16, 32] -> 16_32."""
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "_".join(_short(v) for v in value)
    return str(value).lstrip(".")


def _select(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_name(rule: RunNameRule, pipeline: str, config: dict, overrides: list[str]) -> str:
    """`<pipeline>-<parts>-<key>=<value>,...` (at most NAME_MAX characters): the rule's parts by
    value (a key ending in `name` as its value, a true flag as its last key, any other as last
    key + value: `beta4`), then the other overrides by their last key, except those of the
    rule's `skip`, the job groups (hydra, wandb, paths) and the keys that do not change an
    experiment (dnnlab.train.settings.SAME_EXPERIMENT); a long value is cut."""
    parts = [pipeline]
    for key in rule.parts:
        value, last = _select(config, key), key.rsplit(".", 1)[-1]
        if value is None or value is False:
            continue
        parts.append(last if value is True else _short(value) if last == "name"
                     else f"{last}{_short(value)}")
    skip = set(rule.skip) | set(rule.parts) | set(SAME_EXPERIMENT)
    extra = []
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in skip or key.split(".")[0] in skip or key.split(".")[0] in JOB_GROUPS:
            continue
        value = value if len(value) <= VALUE_MAX else value[:VALUE_MAX - 3] + "..."
        extra.append(f"{key.rsplit('.', 1)[-1]}={value}")
    if extra:
        parts.append(",".join(extra))
    return "-".join(parts)[:NAME_MAX]


def run_tags(rule: RunNameRule, pipeline: str, config: dict, user_tags: list[str],
             choices: dict | None = None, *more: str) -> list[str]:
    """The user's tags, the pipeline, the values of the rule's `tags` (a config key, or a
    config group's choice in Hydra's `choices`) and `more`, each once."""
    values = [_select(config, k) if _select(config, k) is not None else (choices or {}).get(k)
              for k in rule.tags]
    extra = [pipeline, *values, *more]
    return list(dict.fromkeys([*user_tags, *(str(t) for t in extra if t)]))
