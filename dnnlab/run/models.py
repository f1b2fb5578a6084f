"""Building objects from config specs: networks (torchvision builders, layer lists written in
YAML), and what a training run needs."""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from dnnlab.core.errors import ConfigError, DnnlabError
from dnnlab.train import loop
from dnnlab.train.data import Batches, check_fits


def _resolve_type(name: str, where: str) -> type:
    """`Conv2d` -> dnnlab.nn.Conv2d if dnnlab has it, else torch.nn.Conv2d; dotted names as is."""
    if "." in name:
        mod, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            raise ConfigError(f"{where}.type: cannot import '{name}'") from None
    import dnnlab.nn

    for mod in (torch.nn, dnnlab.nn):
        if hasattr(mod, name) and isinstance(getattr(mod, name), type):
            return getattr(mod, name)
    raise ConfigError(f"{where}.type: unknown layer type '{name}' (not in torch.nn or dnnlab.nn)")


def build_layers(layers: Sequence[Mapping[str, Any]], where: str = "model.builder.layers"
                 ) -> torch.nn.Sequential:
    """nn.Sequential from a list of `{type: Name, **kwargs}` (torch.nn names, or dotted paths).

    Short names are torch.nn's (`Conv2d`, `ReLU`, ...); write `dnnlab.nn.Conv2d` for dnnlab's.
    A bad entry raises ConfigError naming it, e.g. `model.builder.layers[3].type`.
    """
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ConfigError(f"{where}: expected a list of layers, got {type(layers).__name__}")
    mods = []
    for i, spec in enumerate(layers):
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}[{i}]={spec!r}: expected {{type: Name, ...}}")
        spec = dict(spec)
        if "type" not in spec:
            raise ConfigError(f"{where}[{i}]: missing key 'type'")
        cls = _resolve_type(str(spec.pop("type")), f"{where}[{i}]")
        try:
            mods.append(cls(**spec))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}[{i}] ({cls.__name__}): {err}") from None
    return torch.nn.Sequential(*mods)


def instantiate_spec(spec: Mapping[str, Any], key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate of a `_target_` spec (a dict or config node) with `kwargs`: passed
    to the object, or, for a `_partial_` spec (optimizers, schedulers), to the partial it makes.
    Any error is one ConfigError naming `key` and the target (a DnnlabError raised by the target
    itself passes through as it is)."""
    from hydra.utils import instantiate

    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigError(f"{key}={spec!r}: expected a `_target_` and its arguments")
    try:
        if spec.get("_partial_"):
            return instantiate(spec)(**kwargs)
        return instantiate(spec, **kwargs)
    except DnnlabError:
        raise
    except Exception as err:  # noqa: BLE001 - a bad argument of a user's _target_
        cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
        if isinstance(cause, DnnlabError):
            raise cause from None
        msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else repr(cause)
        raise ConfigError(f"{key} ({spec['_target_']}): {msg}") from None


def build_model(builder: Mapping[str, Any], device: str | torch.device = "cpu",
                **overrides: Any) -> torch.nn.Module:
    """Instantiate a model spec (`model.builder`) with `overrides` replacing arguments
    (`beta=8.0`). On device 'meta' (no weights) it falls back to the CPU for builders that cannot
    run on meta (torchvision's regnets). Errors name `model.builder`."""
    def make():
        return instantiate_spec(builder, "model.builder", **overrides)

    if str(device) == "meta":
        from dnnlab.opcount import build_meta

        return build_meta(make)  # a config error is reported by the CPU attempt
    with torch.device(device):
        return make()


def build_training(s: Any) -> SimpleNamespace:
    """What a training run needs, from its settings (a dnnlab.train.settings.TrainSettings):
    seeded first, the data splits, the model (checked against the data, on its device), the
    optimizer and scheduler. Every error names its key."""
    loop.seed_everything(s.seed, s.trainer.threads)  # before anything draws a random number
    splits = instantiate_spec(s.data.dataset, "data.dataset", root=s.paths.data_dir)
    model = build_model(s.model["builder"], device="cpu")
    check_fits(model, splits, s.model.get("name"), s.data.name, s.data.num_classes)
    model.to(loop.resolve_device(s.trainer.device))
    opt = instantiate_spec(s.optimizer, "optimizer", params=model.parameters())
    sched = instantiate_spec(s.scheduler, "scheduler", optimizer=opt) if s.scheduler else None
    return SimpleNamespace(model=model, batches=Batches(splits, s.data.batch_size, s.seed),
                           optimizer=opt, scheduler=sched)
