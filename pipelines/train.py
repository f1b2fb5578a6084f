"""Train a network of dnnlab layers and watch docs/math.md (1c) and (4b) at work
(`python -m pipelines.train`, `-m model.pool.beta=0.5,2,inf`, `trainer.resume=true`; docs/train.md).
Writes results.json (test_accuracy, history, ...), metrics.jsonl and checkpoint.pt into the run
dir; the same metrics go to W&B. Everything that can refuse the config (data, model, shapes, a
resume) runs in `prepare`, before the run dir is written to and the W&B run exists.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dnnlab.config import register, resolved_with
from dnnlab.models import build_model, instantiate_spec
from dnnlab.runtime import NothingToDo, console, launch, run_job
from dnnlab.train import loop
from dnnlab.train.logs import TrainLogs
from dnnlab.train.probes import pool_beta
from dnnlab.train.resume import check_same_config, resume_command
from dnnlab.train.settings import TrainSettings

register("train")


def prepare(s: TrainSettings, cfg: DictConfig, run_dir) -> SimpleNamespace:
    loop.seed_everything(s.seed, s.trainer.threads)  # before anything draws a random number
    device = loop.resolve_device(s.trainer.device)
    splits = instantiate_spec(s.data.dataset, "data.dataset", root=s.paths.data_dir)
    model = build_model(s.model["builder"], device="cpu")
    loop.check_fits(model, splits, s.model.get("name"), s.data.name)
    model.to(device)
    opt = instantiate_spec(s.optimizer, "optimizer", params=model.parameters())
    sched = instantiate_spec(s.scheduler, "scheduler", optimizer=opt) if s.scheduler else None
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    ck, old, warning = None, {}, None
    if s.trainer.resume:
        ck, path, warning = loop.read_checkpoint(run_dir)
        check_same_config(ck, lambda pinned: resolved_with(cfg, pinned), path)
        res = run_dir / "results.json"
        old = json.loads(res.read_text()) if res.exists() else {}
        if int(ck["epoch"]) + 1 >= s.trainer.epochs and "test_accuracy" in old:
            raise NothingToDo(f"nothing to do: {run_dir} already finished {int(ck['epoch']) + 1}"
                              f" epochs (trainer.epochs={s.trainer.epochs}); nothing changed. "
                              "Raise trainer.epochs to train longer", old)
    return SimpleNamespace(s=s, splits=splits, model=model, opt=opt, sched=sched, ck=ck,
                           config=config, old=old, warning=warning)


def job(p: SimpleNamespace, tracker) -> dict:
    s, model = p.s, p.model
    if p.warning:
        console.print(f"warning: {p.warning}", highlight=False, soft_wrap=True)
    tracker.results.update({k: v for k, v in p.old.items() if k not in ("status", "error")})
    tracker.update(model=str(s.model.get("name")), data=s.data.name, beta=pool_beta(model),
                   history=p.old.get("history", []))
    logs = TrainLogs(tracker, model, pool_beta(model))
    logs.start(int(p.ck["step"]) if p.ck is not None else None, s.wandb.watch.log,
               s.wandb.watch.log_freq)
    bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} {task.fields[metrics]}"),
                   TimeElapsedColumn(), console=console, disable=not s.trainer.progress)
    task = bar.add_task("train", total=s.trainer.epochs, epoch=0, metrics="")

    def on_epoch(end) -> None:
        logs.on_epoch(end)
        r = end.record
        bar.update(task, completed=r["epoch"] + 1, epoch=r["epoch"] + 1, metrics=(
            f"loss {r['train_loss']:.3f} val_acc {r['val_accuracy']:.3f} "
            f"H/Hmax {end.pool.get('pool/entropy_rel', float('nan')):.2f}"))

    try:
        with bar:
            result = loop.fit(model, p.splits, p.opt, p.sched, s.trainer, tracker.run_dir,
                              s.seed, s.data.batch_size, on_epoch=on_epoch,
                              on_probe=logs.on_probe, on_step=logs.on_step, checkpoint=p.ck,
                              config=p.config)
    except loop.Interrupted as err:
        err.line = (f"interrupted at epoch {err.epoch}, step {err.step}; checkpoint "
                    f"{err.checkpoint or 'none yet (first epoch)'}; resume with: "
                    f"{resume_command('pipelines.train', tracker.overrides, tracker.run_dir)}")
        raise
    logs.finish(result, p.config)
    if result.compile_seconds is not None:
        console.print(f"torch.compile: {result.compile_seconds:.1f} s in the steps that compiled")
    console.print(f"test accuracy {result.test_accuracy:.4f}; "
                  f"results: {tracker.run_dir / 'results.json'}")
    return tracker.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_job(cfg, "train", job, prepare=prepare).get("test_accuracy")


if __name__ == "__main__":
    launch("pipelines.train")
