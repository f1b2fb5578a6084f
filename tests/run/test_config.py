"""Every config file composes against its schema; every model config instantiates; the typed
settings come out of every primary config (lightning-hydra-template's config test)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from dnnlab.run.config import SCHEMAS, schema, to_settings
from dnnlab.run.models import build_model

CONF = Path(__file__).resolve().parents[2] / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
for _p in PRIMARY:  # each pipeline registers its schema when imported
    importlib.import_module(f"pipelines.{_p}")


@pytest.fixture(autouse=True)
def _no_hydra_left_behind():
    """compose() + set_config leave Hydra's singletons set: clear them for the next tests."""
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def _compose(name: str, overrides=(), tmp: Path | None = None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):  # what Hydra fills in for a real run
        cfg.hydra.runtime.output_dir = str(tmp or Path.cwd())
        cfg.hydra.runtime.cwd = str(Path.cwd())
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_every_pipeline_has_a_primary_config_and_a_schema():
    assert set(PRIMARY) == set(SCHEMAS)
    for p in SCHEMAS:
        assert {"wandb", "paths"} <= {f.name for f in schema(p).__dataclass_fields__.values()}


@pytest.mark.parametrize("primary", PRIMARY)
def test_primary_configs_compose_into_typed_settings(primary, tmp_path):
    cfg = _compose(primary, tmp=tmp_path)
    assert OmegaConf.get_type(cfg).__name__ == f"{primary.capitalize()}Config"
    assert cfg.hydra.run.dir.startswith("outputs/")
    with open_dict(cfg):
        del cfg["hydra"]
    settings = to_settings(cfg)
    assert settings.wandb.mode.value == "offline" and settings.paths.data_dir.endswith("/data")


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_and_instantiates(model):
    cfg = _compose("opcount", [f"model={model}"])
    net = build_model(cfg.model.builder, device="meta")
    assert isinstance(net, torch.nn.Module) and any(True for _ in net.parameters())
    if cfg.model.get("input_shape") is None:  # timm (size from pretrained_cfg), token models
        return  # their inputs are checked by tests/opcount/test_zoo.py
    shape = list(cfg.model.input_shape)
    out = torch.func.functional_call(
        net, {k: torch.empty_like(v, device="meta") for k, v in net.state_dict().items()},
        (torch.empty(shape, device="meta"),))
    assert out.shape[0] == shape[0]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = _compose("train", [f"experiment={experiment}"], tmp=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    to_settings(cfg)


def test_a_users_model_folder_on_the_search_path(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mynet.yaml").write_text(
        "name: mynet\ninput_shape: [1, 1, 8]\nbuilder:\n"
        "  _target_: dnnlab.run.models.build_layers\n"
        "  layers:\n    - {type: Conv1d, in_channels: 1, out_channels: 2, kernel_size: 3}\n")
    cfg = _compose("opcount", [f"hydra.searchpath=[file://{tmp_path}]", "model=mynet"])
    assert cfg.model.name == "mynet"
    assert isinstance(build_model(cfg.model.builder)[0], torch.nn.Conv1d)
