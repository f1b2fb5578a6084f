"""Helpers for the training tests: conf/train.yaml composed in-process, tiny real data."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from dnnlab.run.config import register
from dnnlab.train.settings import TrainSettings

CONF = Path(__file__).resolve().parents[2] / "conf"
register("train", TrainSettings)


def compose_train(*overrides: str):
    """conf/train.yaml with `overrides`, as the pipeline gets it (no `hydra` node)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(Path.cwd())
        cfg.paths.output_dir = str(Path.cwd())
    return cfg
