"""Training networks of dnnlab layers (pipelines/train.py): data sets (`data`), the network
(`model`), the loop (`loop.fit`, its `Callback`s, its `state`), the checkpoint (`resume`), what
W&B shows (`logs`), the training-time gradient probes (`probes`), the temperature-sweep plot
(`plots`) and the report section (`report`). Settings: `settings`. The job's resume policy and the
multirun summary are dnnlab.run's (`run.resume`, `run.train_sweep`).

The names below are imported on first use (PEP 562), so that `dnnlab.train.settings` (the
config schema, all a config error or `--help` needs) loads without torch."""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"Batches": "data", "Splits": "data", "fit": "loop", "seed_everything": "loop",
          "Callback": "records", "EpochEnd": "records", "TrainResult": "records",
          "Checkpoint": "resume", "DataConfig": "settings", "TrainerSettings": "settings",
          "TrainSettings": "settings", "TrainState": "state"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dnnlab.train' has no attribute '{name}'")
    return getattr(importlib.import_module(f"dnnlab.train.{_WHERE[name]}"), name)
