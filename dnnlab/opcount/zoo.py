"""Models from outside torchvision, built without downloads: timm (`timm.create_model(name,
pretrained=False)`, its input size from the model's `pretrained_cfg`) and Hugging Face
transformers (a model class built from its config class), and the example inputs a config
describes (`{input_ids: {shape: [1, 128], dtype: int64, high: 30522}}`)."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from dnnlab.core.errors import ConfigError, DnnlabError, first_line

INSTALL = "pip install -e '.[zoo]'"


def _need(package: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise DnnlabError(f"{package} is not installed: {INSTALL}") from None


def timm_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """`timm.create_model(name, pretrained=False, **kwargs)`: random weights, nothing read."""
    timm = _need("timm")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as err:  # "Unknown model (...)"
        raise ConfigError(f"model.name={name!r}: {first_line(err)}") from None


def hf_model(model_class: str, config_class: str, **config: Any) -> torch.nn.Module:
    """`transformers.<model_class>(transformers.<config_class>(**config))`: built from the
    config class (its defaults: the base model's sizes), random weights, nothing downloaded."""
    tf = _need("transformers")
    try:
        cfg = getattr(tf, config_class)(**config)
        return getattr(tf, model_class)(cfg)
    except AttributeError as err:
        raise ConfigError(f"model.builder: transformers has no {err.name or err}") from None


def default_input_shape(model: torch.nn.Module) -> list | None:
    """(1, C, H, W) from a timm model's `pretrained_cfg["input_size"]` (None if it has none)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        return [1] + [int(s) for s in cfg["input_size"]]
    return None


_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "float64": torch.float64, "int64": torch.int64,
           "long": torch.int64, "int32": torch.int32, "int": torch.int32, "bool": torch.bool,
           "uint8": torch.uint8}


def _tensor(spec: Any, key: str, gen: torch.Generator) -> Any:
    if isinstance(spec, (list, tuple)):  # a list of arguments (a list of images)
        return [_tensor(s, f"{key}[{i}]", gen) for i, s in enumerate(spec)]
    if not isinstance(spec, Mapping) or "shape" not in spec:
        raise ConfigError.at(key, spec, "expected {shape: [...], dtype: ..., high: ...}")
    shape = spec["shape"]
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ConfigError.at(f"{key}.shape", shape, "expected a list of ints >= 1")
    name = str(spec.get("dtype", "float32"))
    if name not in _DTYPES:
        raise ConfigError.at(f"{key}.dtype", name, f"expected one of {', '.join(_DTYPES)}")
    dtype, shape = _DTYPES[name], [int(s) for s in shape]
    if dtype.is_floating_point:
        return torch.rand(shape, generator=gen).to(dtype)
    high = spec.get("high", 2)
    if not isinstance(high, int) or high < 1:
        raise ConfigError.at(f"{key}.high", high, "expected an int >= 1 (values < high)")
    return torch.randint(0, high, shape, generator=gen).to(dtype)


def make_inputs(spec: Any, key: str = "inputs") -> Any:
    """Real CPU tensors for a config's `inputs`: a dict of keyword arguments (each a tensor
    spec), a list of positional arguments (a tuple), or one tensor spec. Floats are uniform in
    [0, 1), integers uniform below `high` (token ids), drawn from a fixed generator."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(spec, Mapping) and "shape" not in spec:
        return {str(k): _tensor(v, f"{key}.{k}", gen) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return tuple(_tensor(v, f"{key}[{i}]", gen) for i, v in enumerate(spec))
    return _tensor(spec, key, gen)


def model_inputs(model: torch.nn.Module, input_shape: list | None, inputs: Any
                 ) -> tuple[list | None, Any]:
    """(shape, inputs) to count `model` with: `inputs` when given (made by make_inputs), else
    `input_shape`, else the model's default (timm: its pretrained_cfg's input_size)."""
    if inputs is not None:
        return input_shape, make_inputs(inputs)
    shape = input_shape if input_shape is not None else default_input_shape(model)
    if shape is None:
        raise ConfigError("input_shape: none given and the model has no default "
                          "(give input_shape=[...] or inputs)")
    return shape, None
