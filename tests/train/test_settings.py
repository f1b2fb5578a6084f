"""dnnlab.train.settings: the schema of conf/train.yaml; bad values name their key."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from dnnlab.core.errors import ConfigError
from dnnlab.run.cli import describe
from dnnlab.run.config import to_settings
from dnnlab.train.settings import DataConfig, TrainerSettings, TrainSettings
from tests.train.conftest import compose_train


def test_defaults_compose_into_typed_settings():
    s = to_settings(compose_train())
    assert isinstance(s, TrainSettings) and isinstance(s.trainer, TrainerSettings)
    assert isinstance(s.data, DataConfig) and s.seed == 0
    assert (s.data.name, s.data.batch_size, s.data.channels, s.data.image_size) == (
        "digits", 64, 1, 8)
    assert s.data.dataset == {"_target_": "dnnlab.train.data.digits", "val_fraction": 0.2,
                              "test_fraction": 0.2, "split_seed": 0}
    assert s.trainer == TrainerSettings(epochs=10, device="auto", probe_every=20, resume="auto",
                                        checkpoint_every=0, progress=True)
    assert s.model["builder"]["_target_"] == "dnnlab.train.model.SmoothMaxCNN"
    assert s.optimizer["_partial_"] is True and s.scheduler["T_max"] == 10
    assert to_settings(compose_train("scheduler=none")).scheduler is None


@pytest.mark.parametrize("override,line", [
    ("trainer.epochs=0", "trainer.epochs=0: must be >= 1"),
    ("trainer.epochs=-1", "trainer.epochs=-1: must be >= 1"),
    ("trainer.probe_every=-5", "trainer.probe_every=-5: must be >= 0"),
    ("data.batch_size=0", "data.batch_size=0: must be a positive int"),
    ("data.image_size=0", "data.image_size=0: must be >= 1"),
    ("trainer.resume=maybe", "trainer.resume='maybe': expected true, false or auto"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1: must be >= 0"),
    ("trainer.precision=fp8", "trainer.precision='fp8': expected 32, bf16 or fp16"),
    ("trainer.accumulate=0", "trainer.accumulate=0: must be >= 1"),
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0: must be > 0"),
    ("trainer.early_stopping.monitor=val_acc",
     "trainer.early_stopping.monitor='val_acc': expected one of val_loss, val_accuracy"),
    ("trainer.early_stopping.mode=up", "trainer.early_stopping.mode='up': expected min or max"),
])
def test_bad_values_name_the_key(override, line):
    with pytest.raises(ConfigError) as err:
        to_settings(compose_train(override))
    assert str(err.value).startswith(line)


@pytest.mark.parametrize("override,line", [
    ("trainer.epochs=abc", "trainer.epochs: Value 'abc' of type 'str' could not be converted"),
    ("seed=abc", "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    ("data.batch_size=12.5", "data.batch_size: Value '12.5' of type 'float' could not be"),
])
def test_wrong_types_fail_while_composing_with_the_key(override, line):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(override)
    said, status = describe(err.value)
    assert said.startswith(line) and status == 2


def test_dataclass_checks_directly():
    with pytest.raises(ConfigError, match=r"^dataset=.*_target_"):
        DataConfig(dataset={"val_fraction": 0.2})
    with pytest.raises(ConfigError, match=r"^epochs=0"):
        TrainerSettings(epochs=0)
    assert TrainerSettings(probe_every=0).probe_every == 0


# the keys that do not change an experiment: one declaration, three readers
_VALUES = {"trainer.resume": "true", "trainer.progress": "false",
           "trainer.checkpoint_every": "7", "trainer.processes": "1", "wandb.mode": "disabled",
           "wandb.watch.log": "all", "wandb.watch.log_freq": "5", "paths.root_dir": "/r",
           "paths.output_dir": "/o", "hydra.run.dir": "/x", "hydra.sweep.dir": "/y"}


def test_same_experiment_keys_are_the_one_list_of_dir_name_run_name_and_resume():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from dnnlab.run import hydra_job  # noqa: F401 - the resolvers of conf/hydra/default.yaml
    from dnnlab.run.naming import run_name
    from dnnlab.run.settings import RunNameRule
    from dnnlab.train.resume import config_diff
    from dnnlab.train.settings import MAY_CHANGE, SAME_EXPERIMENT
    from tests.train.conftest import CONF

    assert set(_VALUES) == set(SAME_EXPERIMENT)  # every key of the declaration is exercised
    same = [f"{k}={v}" for k, v in _VALUES.items()]
    # Hydra's run dir name: only the overrides that change the experiment
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            hc = compose(config_name="train", overrides=[*same, "seed=3", "trainer.epochs=2"],
                         return_hydra_config=True).hydra
    finally:
        GlobalHydra.instance().clear()
    assert hc.job.override_dirname == "seed=3,trainer.epochs=2"
    assert list(hc.job.config.override_dirname.exclude_keys) == list(SAME_EXPERIMENT)
    # the W&B run name, by conf/train.yaml's rule
    rule = RunNameRule(**compose_train().wandb.run_name)
    assert run_name(rule, "train", {}, [*same, "seed=3"]) == "train-seed=3"
    # the resume: a change of any of them (and of trainer.epochs) is no difference
    before = compose_train()
    now = compose_train(*(o for o in same if not o.startswith("hydra.")), "trainer.epochs=2")
    a, b = (OmegaConf.to_container(c, resolve=True) for c in (before, now))
    assert config_diff(a, b) == [("scheduler.T_max", 10, 2)]  # T_max = trainer.epochs
    assert set(MAY_CHANGE) - set(SAME_EXPERIMENT) == {"trainer.epochs"}
