"""Building networks from configs: torchvision builders and layer lists written in YAML."""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dnnlab.core.errors import ConfigError, DnnlabError


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


def materialize(model: torch.nn.Module) -> torch.nn.Module:
    """A model built on meta, given zero CPU weights (for fvcore, which needs real tensors)."""
    if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.zero_()
                else:
                    t.fill_(1)
    return model


class SmoothMaxCNN(torch.nn.Module):
    """A small CNN of dnnlab layers: Conv2d (hand-written backprop, docs/math.md (4b)) and
    SmoothMaxPool2d with temperature beta (docs/math.md (1a)-(1c)): beta -> inf is max pooling,
    small beta is average-like.

    (B, C, H, W) -> conv3x3 -> ReLU -> conv3x3 -> ReLU -> smooth-max pool 2x2 -> (B, c2, H/2, W/2)
    -> conv3x3 -> ReLU -> global smooth-max pool -> (B, c3) -> Linear -> (B, num_classes)
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 channels: Sequence[int] = (32, 64, 64), beta: float | str = 4.0,
                 learnable: bool = False, normalized: bool = False,
                 ties: str = "shared") -> None:
        super().__init__()
        from dnnlab.core.beta import parse_beta
        from dnnlab.core.errors import require
        from dnnlab.nn import Conv2d, SmoothMaxPool2d

        beta = parse_beta(beta, "model.pool.beta")
        require(ties in ("shared", "first"), "model.pool.ties", ties, "expected shared or first")
        pool = SmoothMaxPool2d
        if len(channels) != 3:
            raise ConfigError(f"model.builder.channels: expected 3 sizes, got {list(channels)}")
        c1, c2, c3 = [int(c) for c in channels]
        self.features = torch.nn.Sequential(
            Conv2d(in_channels, c1, 3, padding=1), torch.nn.ReLU(),
            Conv2d(c1, c2, 3, padding=1), torch.nn.ReLU(),
            pool(beta, kernel_size=2, learnable=learnable, normalized=normalized, ties=ties),
            Conv2d(c2, c3, 3, padding=1), torch.nn.ReLU(),
            pool(beta, learnable=learnable, normalized=normalized, ties=ties),  # global
        )
        self.head = torch.nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self.head(self.features(x).flatten(1))  # (B, num_classes)
