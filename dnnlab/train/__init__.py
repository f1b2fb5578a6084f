"""Training networks of dnnlab layers (pipelines/train.py): data sets (`data`), the network
(`model`), the loop (`loop.fit`, its `Callback`s, its `state`), the checkpoint (`resume`),
what W&B shows (`logs`), the training-time gradient probes (`probes`), the temperature-sweep
plot (`plots`) and the report section (`report`). Settings: `settings`. The job's resume
policy and the multirun summary are dnnlab.run's (`run.resume`, `run.train_sweep`)."""
from dnnlab.train.data import Batches, Splits
from dnnlab.train.loop import fit, seed_everything
from dnnlab.train.records import Callback, EpochEnd, TrainResult
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import DataConfig, TrainerSettings, TrainSettings
from dnnlab.train.state import TrainState

__all__ = ["Batches", "Callback", "Checkpoint", "DataConfig", "EpochEnd", "Splits",
           "TrainResult", "TrainSettings", "TrainState", "TrainerSettings", "fit",
           "seed_everything"]
