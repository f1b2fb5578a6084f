"""Training networks of dnnlab layers (pipelines/train.py): data sets (`data`), the loop
(`loop.fit`, its `Callback`s), the checkpoint and resume (`resume`), what W&B shows (`logs`),
the training-time gradient probes (`probes`), the multirun summary (`sweep`), the
temperature-sweep plot (`plots`) and the report section (`report`). Settings: `settings`."""
from dnnlab.train.data import Batches, Splits
from dnnlab.train.loop import fit, seed_everything
from dnnlab.train.records import Callback, EpochEnd, TrainResult
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import DataConfig, TrainerSettings, TrainSettings

__all__ = ["Batches", "Callback", "Checkpoint", "DataConfig", "EpochEnd", "Splits",
           "TrainResult", "TrainSettings", "TrainerSettings", "fit", "seed_everything"]
