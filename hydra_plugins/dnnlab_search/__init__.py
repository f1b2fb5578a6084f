"""dnnlab's Hydra plugin: the resumable Optuna sweeper of `experiment=search` (optuna_resumable)."""
