"""dnnlab's Hydra plugin: the Optuna sweeper of `experiment=search` (sweeper.DnnlabSweeper, its
space in space.py, optimization_results.yaml in results.py). A Hydra plugin must live in the
hydra_plugins package; Hydra imports every module here at start-up, so Optuna is imported only
when a search runs."""
