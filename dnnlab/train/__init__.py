"""Training networks of dnnlab layers (pipelines/train.py): data sets (`data`), the loop
(`loop.fit`), the training-time gradient probes (`probes`), the multirun summary (`sweep`),
the temperature-sweep plot (`plots`) and the report section (`report`). Settings: `settings`."""
from dnnlab.train.data import Splits
from dnnlab.train.loop import EpochEnd, TrainResult, fit, seed_everything
from dnnlab.train.settings import DataConfig, TrainerSettings, TrainSettings

__all__ = ["DataConfig", "EpochEnd", "Splits", "TrainResult", "TrainSettings", "TrainerSettings",
           "fit", "seed_everything"]
