"""Structured configs: the dataclass schema of every pipeline's config, in Hydra's ConfigStore.

Each topic defines its experiment's settings as a dataclass (types, defaults, range checks in
`__post_init__`) and its pipeline registers it (`register("train", TrainSettings)`); here they
become the schemas of the primary configs, with the groups every
job shares (`wandb`, `paths`). A primary YAML lists `<pipeline>_schema` first, so Hydra checks
types while composing (`trainer.epochs=abc` fails, naming the key) and `to_settings(cfg)` runs
the dataclasses' own checks with the full key (`trainer.epochs=0: must be >= 1`) and refuses
keys the schema lacks (`+trainer.epoch=3`). The groups every job shares are dnnlab.run.settings.
Library functions take the typed settings, never a DictConfig.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from dnnlab.core.errors import ConfigError, UnknownKeyError, first_line
from dnnlab.run.settings import JobConfig

# pipeline -> its topic's settings (a dataclass, or a function that builds one), which the
# schema extends; each pipeline registers its own (the topics never import dnnlab.run)
SCHEMAS: dict[str, type | Callable[[], type]] = {}


def schema(pipeline: str) -> type:
    """The schema of `pipeline`'s primary config: its settings + the JobConfig groups."""
    settings = SCHEMAS[pipeline]
    if not isinstance(settings, type):
        settings = settings()
    return dataclasses.make_dataclass(f"{pipeline.capitalize()}Config", [],
                                      bases=(settings, JobConfig))


def register(pipeline: str, settings: type | Callable[[], type]) -> None:
    """Store `<pipeline>_schema` (`settings` + the JobConfig groups) in Hydra's ConfigStore."""
    from dnnlab.run import hydra_job  # noqa: F401 - the resolvers conf/hydra/default.yaml uses

    SCHEMAS[pipeline] = settings
    ConfigStore.instance().store(name=f"{pipeline}_schema", node=schema(pipeline))


def _check_nodes(cfg: DictConfig, prefix: str) -> None:
    """Check every typed node deepest first: keys its dataclass lacks are refused (Hydra's `+`
    adds them even to a structured config), then the dataclass's own checks run, each error
    under the node's path."""
    cls = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
        for key in cfg.keys():
            if key not in names:
                path = f"{prefix}.{key}" if prefix else str(key)
                near = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise UnknownKeyError(f"{path}: no such key in {cls.__name__}{hint}")
    for key, child in cfg.items_ex(resolve=False):
        if isinstance(child, DictConfig) and not OmegaConf.is_missing(cfg, key):
            path = f"{prefix}.{key}" if prefix else str(key)
            _check_nodes(child, path)
            if dataclasses.is_dataclass(OmegaConf.get_type(child)):
                try:
                    OmegaConf.to_object(child)
                except ConfigError as err:
                    raise err.under(path) from None


def to_settings(cfg: DictConfig) -> Any:
    """The typed settings of a composed config (a dataclass instance; `Any` nodes such as a
    model's `_target_` spec become plain dicts and lists). ConfigError names the full key."""
    _check_nodes(cfg, "")
    return OmegaConf.to_object(cfg)


def settings_of(cls: type, values: Any, key: str) -> Any:
    """`values` (a dict or DictConfig) checked against the dataclass `cls`, as an instance;
    every error (a wrong type, a bad value, an unknown key) is a ConfigError under `key`."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), values or {})
    except OmegaConfBaseException as err:
        full = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else key
        raise ConfigError(f"{full}: {first_line(err)}") from None
    _check_nodes(node, key)
    try:
        return OmegaConf.to_object(node)
    except ConfigError as err:
        raise err.under(key) from None


def resolved_with(cfg: DictConfig, values: dict[str, Any]) -> dict:
    """The config as a plain dict, resolved after setting the dotted keys of `values` (values
    that interpolate them, such as a schedule's `T_max: ${trainer.epochs}`, follow)."""
    now = cfg.copy()
    with open_dict(now):
        for key, value in values.items():
            OmegaConf.update(now, key, value, force_add=True)
    return OmegaConf.to_container(now, resolve=True, enum_to_str=True)
