"""Train a network of dnnlab layers and watch the seed's mathematics at work.

    python -m pipelines.train                                   # digits, smooth-max CNN, beta=4
    python -m pipelines.train -m model.pool.beta=0.5,1,2,4,8,16,inf
    python -m pipelines.train -m experiment=temperature_sweep
    python -m pipelines.train trainer.resume=true hydra.run.dir=<the run's dir>

Writes results.json (test_accuracy, history, ...), metrics.jsonl and checkpoint.pt into the run
dir; the same metrics go to W&B.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnnlab.cli import console, run_job
from dnnlab.tracking import Tracker
from dnnlab.trainer import train


def job(cfg: DictConfig, tracker: Tracker) -> dict:
    results = train(cfg, tracker)
    console.print(f"test accuracy {results['test_accuracy']:.4f}; "
                  f"results: {tracker.run_dir / 'results.json'}")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_job(cfg, "train", job)["test_accuracy"]


if __name__ == "__main__":  # run as pipelines.train, not __main__, so that launchers
    import pipelines.train  # that pickle the task (joblib, submitit) pickle it by reference
    from dnnlab.cli import main_guard

    main_guard()  # a config group option that does not exist: one line
    pipelines.train.main()
