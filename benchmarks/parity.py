"""Parity: dnnlab's training loop against a bare PyTorch loop on the same model, data,
optimizer, schedule and seed (the default `python -m pipelines.train`: SmoothMaxCNN on digits,
Adam, cosine, 1 thread).

    python benchmarks/parity.py [--quick] [--device cpu|cuda] [--epochs N] [--rounds N]

1. Losses: every step's loss of dnnlab.train.loop.fit (with the pipeline's callbacks: TrainLogs
   on a W&B offline Tracker, the per-epoch checkpoint) against the bare loop's, to 1e-6 (float32),
   with probes off (both draw the same random numbers) and with probes on (a probe must not
   change the training).
2. Throughput, from interleaved pairs of runs (dnnlab.core.timing.paired_ratio), for the
   default settings and with each switch turned off, as the median ratio with its quartiles:
   - per epoch's training, the target: the images/s dnnlab logs as train/images_per_s (the
     epoch's steps, its logging, probes and mid-epoch checkpoints) against the bare loop's
     training loops, timed alike;
   - over the whole `fit` (each epoch's validation, pooling statistics, checkpoint and
     callbacks included) against the bare loop's (which validates each epoch too).
3. Fixed cost beyond imports: W&B init, TrainLogs' set-up, the first checkpoint, the finish
   (summary, artifacts) and closing the W&B run, each timed once per round (median, quartiles).

It prints the figures and exits 0 (a benchmark, not a test). The machine may be shared: a ratio
whose quartiles straddle the target is "not resolved".
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnnlab.core.timing import paired_ratio  # noqa: E402
from dnnlab.train.records import Callback  # noqa: E402

TARGET = 0.95


def settings(epochs: int, device: str, *overrides: str):
    """The default pipelines.train settings (conf/train.yaml) with `overrides`."""
    from hydra import compose, initialize_config_dir

    import pipelines.train  # noqa: F401 - registers the train schema
    from dnnlab.run.config import to_settings

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"trainer.epochs={epochs}", f"trainer.device={device}",
                                "trainer.progress=false", f"paths.root_dir={ROOT}",
                                "paths.output_dir=.", *overrides])
    from omegaconf import OmegaConf

    return to_settings(cfg), OmegaConf.to_container(cfg, resolve=True)


class Losses(Callback):
    """A loop Callback that keeps every step's loss (trainer.log_every=1) in `.values`."""

    def __init__(self):
        self.values = []

    def on_step(self, step, loss, lr):
        self.values.append(float(loss))


def dnnlab_run(s, config, run_dir: Path, wandb: bool, checkpoint: bool, extra=()) -> dict:
    """pipelines.train's job, in process: build, a Tracker, TrainLogs, fit, finish. Returns the
    training seconds (fit), the fixed costs around it and the result."""
    from dnnlab.run.models import build_training
    from dnnlab.run.tracking import Tracker
    from dnnlab.train import loop
    from dnnlab.train.logs import TrainLogs, wandb_config
    from dnnlab.train.probes import pool_beta
    from dnnlab.train.resume import Checkpoint

    cost = {}
    t = time.perf_counter()
    b = build_training(s)  # seeded; the data, the model (its shapes checked), the optimizer
    cost["build"] = time.perf_counter() - t
    w = s.wandb if wandb else dataclasses.replace(s.wandb, mode="disabled")
    t = time.perf_counter()
    tracker = Tracker(w, run_dir, job_type="train", name="parity", config=wandb_config(config))
    tracker.__enter__()
    cost["wandb_init"] = time.perf_counter() - t
    t = time.perf_counter()
    logs = TrainLogs(tracker, b.model, pool_beta(b.model))
    cost["logs_setup"] = time.perf_counter() - t
    ck = Checkpoint(run_dir / "checkpoint.pt", config) if checkpoint else None
    t = time.perf_counter()
    result = loop.fit(b.model, b.batches, b.optimizer, b.scheduler, s.trainer,
                      [logs, *extra], ck)
    seconds = time.perf_counter() - t
    if checkpoint:  # one more save, as fit makes each epoch
        t = time.perf_counter()
        ck.save({"model": b.model.state_dict(), "optimizer": b.optimizer.state_dict()})
        cost["checkpoint"] = time.perf_counter() - t
    t = time.perf_counter()
    logs.finish(result, config, run_dir / "checkpoint.pt")
    cost["finish"] = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its "W&B: run ..." line
        tracker.__exit__(None, None, None)
    cost["wandb_finish"] = time.perf_counter() - t
    n_train = len(b.batches.splits.train)  # every epoch trains on all of it (no limit_batches)
    trained = sum(n_train / h["images_per_s"] for h in result.history)
    return {"seconds": seconds, "trained": trained, "cost": cost, "result": result}


def bare_run(s, losses: list | None = None, train_seconds: list | None = None) -> float:
    """The bare loop: the same build (seed, data, model, optimizer, scheduler), then ~25 lines
    of plain PyTorch, validating each epoch and testing at the end. Returns its seconds."""
    from dnnlab.run.models import build_training
    from dnnlab.train.loop import resolve_device

    b = build_training(s)
    model, opt, sched, data = b.model, b.optimizer, b.scheduler, b.batches
    device = resolve_device(s.trainer.device)
    val = list(torch.utils.data.DataLoader(data.splits.val, batch_size=256))
    test = torch.utils.data.DataLoader(data.splits.test, batch_size=256)
    t = time.perf_counter()
    trained = 0.0  # the epochs' training loops alone (as dnnlab's train/images_per_s)
    for epoch in range(s.trainer.epochs):
        model.train()
        t_epoch = time.perf_counter()
        for x, y in data.train(epoch):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if losses is not None:
                losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize()
        trained += time.perf_counter() - t_epoch
        sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum())
                          for x, y in val)
    with torch.no_grad():
        correct += sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in test)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if train_seconds is not None:
        train_seconds.append(trained)
    return time.perf_counter() - t


def check_losses(epochs: int, device: str, tmp: Path) -> list[str]:
    lines = []
    ref: list = []
    bare_run(settings(epochs, device)[0], ref)
    for name, over in (("probes off", ["trainer.probe_every=0"]),
                       ("probes on (every 20 steps)", [])):
        s, config = settings(epochs, device, *over)
        got = Losses()
        d = tmp / f"loss-{len(lines)}"
        d.mkdir()
        dnnlab_run(s, config, d, wandb=False, checkpoint=True, extra=[got])
        n = min(len(ref), len(got.values))
        diff = max(abs(a - b) for a, b in zip(ref, got.values)) if n else float("nan")
        ok = len(ref) == len(got.values) and diff <= 1e-6
        lines.append(f"losses, {name}: {len(got.values)} steps vs {len(ref)}, max |diff| "
                     f"{diff:.2e} -> {'EQUAL to 1e-6' if ok else 'DIFFERENT'}")
    return lines


SWITCHES = [  # (row, overrides, W&B on, checkpoint on)
    ("default (probes/20, log/1, W&B offline, checkpoint)", [], True, True),
    ("trainer.probe_every=0", ["trainer.probe_every=0"], True, True),
    ("trainer.log_every=0", ["trainer.log_every=0"], True, True),
    ("wandb.mode=disabled", [], False, True),
    ("no checkpoint", [], True, False),
    ("all four off", ["trainer.probe_every=0", "trainer.log_every=0"], False, False),
]


def _mean_seconds(fn, n: int) -> float:
    """paired_ratio's time_fn: each side returns its own training seconds (the builds, W&B's
    set-up and the finish are not in them: they are the fixed cost, timed apart)."""
    return statistics.mean(fn() for _ in range(n))


def throughput(epochs: int, device: str, rounds: int, tmp: Path) -> tuple[list, dict]:
    """Per switch: (row, per-epoch training images/s ratio dnnlab / bare with its quartiles,
    whole-fit images/s ratio with its quartiles, seconds of each side's fit), from the same
    interleaved pairs of runs."""
    rows, costs, runs = [], {}, [0]
    base = settings(epochs, device)[0]
    for name, over, wandb, ck in SWITCHES:
        s, config = settings(epochs, device, *over)
        ours_train, bare_train = [], []

        def ours(s=s, config=config, wandb=wandb, ck=ck, name=name, keep=ours_train):
            runs[0] += 1
            d = tmp / f"run-{runs[0]}"
            d.mkdir()
            out = dnnlab_run(s, config, d, wandb, ck)
            if name == SWITCHES[0][0]:
                for k, v in out["cost"].items():
                    costs.setdefault(k, []).append(v)
            keep.append(out["trained"])
            return out["seconds"]

        pt = paired_ratio(ours, lambda keep=bare_train: bare_run(base, train_seconds=keep),
                          rounds=rounds, min_run_time=0, calls=(1, 1), time_fn=_mean_seconds)
        # the same images on both sides: images/s ratio = bare seconds / dnnlab seconds, pair
        # by pair (paired_ratio ran the i-th of each side as its i-th pair)
        per_epoch = [b / a for a, b in zip(ours_train, bare_train)]
        lo, mid, hi = quartiles(per_epoch)
        rows.append((name, mid, lo, hi, 1 / pt.ratio, 1 / pt.high, 1 / pt.low, pt.a, pt.b))
    return rows, costs


def quartiles(v: list[float]) -> tuple[float, float, float]:
    if len(v) < 2:
        return v[0], v[0], v[0]
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q1, q2, q3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 epochs, 3 rounds")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cpu, then cuda if any)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    a = ap.parse_args()
    epochs = a.epochs or (2 if a.quick else 10)
    rounds = a.rounds or (3 if a.quick else 7)
    devices = [a.device] if a.device else ["cpu"] + (["cuda"] if torch.cuda.is_available()
                                                      else [])
    import os

    print(f"parity: dnnlab.train.loop.fit vs a bare loop, {epochs} epochs of digits, "
          f"{rounds} interleaved pairs; {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine: noisy)")
    for device in devices:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            print(f"\n[{device}]")
            for line in check_losses(epochs, device, tmp):
                print("  " + line)
            rows, costs = throughput(epochs, device, rounds, tmp)
        print("  images/s vs the bare loop: per epoch's training (dnnlab's train/images_per_s; "
              f"the target, >= {TARGET}) and over the whole fit (with each epoch's validation, "
              "pooling statistics, checkpoint and callbacks)")
        print(f"  {'setting':52s} {'per epoch':>9s} {'quartiles':>13s}  {'verdict':12s} "
              f"{'whole fit':>9s} {'quartiles':>13s} {'dnnlab s':>9s} {'bare s':>7s}")
        for name, r, lo, hi, rf, flo, fhi, ta, tb in rows:
            verdict = ("meets" if lo >= TARGET else "below" if hi < TARGET else "not resolved")
            print(f"  {name:52s} {r:9.3f} {lo:6.3f}-{hi:<6.3f}  {verdict:12s} {rf:9.3f} "
                  f"{flo:6.3f}-{fhi:<6.3f} {ta:9.3f} {tb:7.3f}")
        # beyond imports and the build (data, model): W&B, the checkpoint, the finish
        total = [sum(v) - b for v, b in zip(zip(*costs.values()), costs["build"])]
        print("  fixed cost beyond imports (default settings; median, quartiles, seconds; "
              "total: all but the build):")
        for k, v in list(costs.items()) + [("total", total)]:
            q1, q2, q3 = quartiles(v)
            print(f"    {k:14s} {q2:7.3f}  ({q1:.3f}-{q3:.3f})")
        q1, q2, q3 = quartiles(total)
        print(f"  fixed cost total {q2:.3f} s: "
              f"{'<= 1 s' if q3 <= 1 else '> 1 s' if q1 > 1 else 'not resolved against 1 s'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
