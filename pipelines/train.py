"""Train a network of dnnlab layers and watch docs/math.md (1c) and (4b) at work.

    python -m pipelines.train                                   # digits, smooth-max CNN, beta=4
    python -m pipelines.train -m model.pool.beta=0.5,1,2,4,8,16,inf
    python -m pipelines.train trainer.resume=true hydra.run.dir=<the run's dir>

Writes results.json (test_accuracy, history, ...), metrics.jsonl and checkpoint.pt into the run
dir; the same metrics go to W&B.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dnnlab.config import register
from dnnlab.models import build_model, instantiate_spec
from dnnlab.runtime import console, launch, run_job
from dnnlab.train.loop import check_fits, fit, resolve_device, seed_everything
from dnnlab.train.probes import pool_beta
from dnnlab.train.settings import TrainSettings

register("train")


def job(s: TrainSettings, tracker) -> dict:
    seed_everything(s.seed)  # before anything draws a random number
    device = resolve_device(s.trainer.device)
    splits = instantiate_spec(s.data.dataset, "data.dataset", root=s.paths.data_dir)
    model = build_model(s.model["builder"], device="cpu")
    check_fits(model, splits, s.model.get("name"), s.data.name)
    model.to(device)
    opt = instantiate_spec(s.optimizer, "optimizer", params=model.parameters())
    sched = instantiate_spec(s.scheduler, "scheduler", optimizer=opt) if s.scheduler else None
    tracker.results.update(model=str(s.model.get("name")), data=s.data.name,
                           beta=pool_beta(model), history=[])
    bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} {task.fields[metrics]}"),
                   TimeElapsedColumn(), console=console, disable=not s.trainer.progress)
    task = bar.add_task("train", total=s.trainer.epochs, epoch=0, metrics="")

    def on_epoch(end) -> None:
        tracker.log(end.metrics(), step=end.step)
        tracker.results["history"] = end.history
        tracker.save()
        r = end.record
        bar.update(task, completed=r["epoch"] + 1, epoch=r["epoch"] + 1, metrics=(
            f"loss {r['train_loss']:.3f} val_acc {r['val_accuracy']:.3f} "
            f"H/Hmax {end.pool.get('pool/entropy_rel', float('nan')):.2f}"))

    with bar:
        result = fit(model, splits, opt, sched, s.trainer, tracker.run_dir, s.seed,
                     s.data.batch_size, on_epoch=on_epoch, on_probe=tracker.log)
    tracker.log({"test/accuracy": result.test_accuracy, "test/loss": result.test_loss},
                step=result.steps)
    tracker.results.update(result.to_dict())
    tracker.summary(**result.final())
    console.print(f"test accuracy {result.test_accuracy:.4f}; "
                  f"results: {tracker.run_dir / 'results.json'}")
    return tracker.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_job(cfg, "train", job)["test_accuracy"]


if __name__ == "__main__":
    launch("pipelines.train")
