"""Every config file composes; every model config instantiates (lightning-hydra-template style)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dnnlab.models import build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) if (
    CONF / "experiment").exists() else []


def _compose(name: str, overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("primary", PRIMARY)
def test_primary_configs_compose(primary):
    cfg = _compose(primary)
    assert "wandb" in cfg and cfg.wandb.mode == "offline"
    assert cfg.hydra.run.dir.startswith("outputs/")
    OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_and_instantiates(model):
    cfg = _compose("count_ops", [f"model={model}"])
    assert list(cfg.input_shape) == list(cfg.model.input_shape)
    net = build_model(cfg.model, device="meta")
    assert isinstance(net, torch.nn.Module)
    out = torch.func.functional_call(
        net, {k: torch.empty_like(v, device="meta") for k, v in net.state_dict().items()},
        (torch.empty(list(cfg.input_shape), device="meta"),))
    assert out.shape[0] == cfg.input_shape[0]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = _compose("train", [f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=False)
