"""Parity: dnnlab's training loop against a bare PyTorch loop on the same model, data,
optimizer, schedule and seed (the default `python -m pipelines.train`: SmoothMaxCNN on digits,
Adam, cosine, 1 thread).

    python benchmarks/parity.py [--quick] [--device cpu|cuda] [--epochs N] [--rounds N]

1. Losses: every step's loss of dnnlab.train.loop.fit (with the pipeline's callbacks: TrainLogs
   on a W&B offline Tracker, the per-epoch checkpoint) against the bare loop's, to 1e-6 (float32),
   with probes off (both draw the same random numbers) and with probes on (a probe must not
   change the training).
2. Throughput, for the default settings and with each switch turned off. This machine's speed
   drifts by 10-30% over seconds, so the two loops run side by side: the bare loop trains one
   epoch from dnnlab's `on_epoch` callback (its own build: same seed, data, model, optimizer,
   schedule), and each pair of epochs is timed within a second of each other.
   - per epoch's training, the target: the images/s dnnlab logs as train/images_per_s (the
     epoch's steps, its logging, probes and mid-epoch checkpoints) against the bare loop's
     epoch, timed alike; the median ratio over every pair with its distribution-free 95%
     confidence interval (the verdict) and its quartiles (the spread of single epochs);
   - over the whole `fit` (each epoch's validation, pooling statistics, checkpoint, callbacks
     and the test) against the bare loop's (which validates each epoch and tests at the end),
     per run: the median and quartiles over the rounds.
3. Fixed cost beyond imports: W&B init, TrainLogs' set-up, the first checkpoint, the finish
   (summary, artifacts) and closing the W&B run, each timed once per round (median, quartiles).

It prints the figures and exits 0 (a benchmark, not a test). A ratio whose confidence interval
holds the target is "not resolved".
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    return {"seconds": seconds, "n_train": n_train, "cost": cost, "result": result}


class BareLoop(Callback):
    """The bare loop: the same build (seed, data, model, optimizer, scheduler), then ~25 lines of
    plain PyTorch, an epoch at a time (`epoch`; as a Callback, one per dnnlab epoch), validating
    each epoch; `test` at the end. It keeps each epoch's training seconds (`train`, as dnnlab's
    train/images_per_s times its epoch) and all its seconds (`total`)."""

    def __init__(self, s, losses: list | None = None):
        from dnnlab.run.models import build_training
        from dnnlab.train.loop import resolve_device

        b = build_training(s)
        self.model, self.opt, self.sched, self.data = b.model, b.optimizer, b.scheduler, b.batches
        self.device, self.losses = resolve_device(s.trainer.device), losses
        self.val = list(torch.utils.data.DataLoader(self.data.splits.val, batch_size=256))
        self.train, self.total = [], []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def epoch(self, epoch: int) -> None:
        model, opt, device = self.model, self.opt, self.device
        t = time.perf_counter()
        model.train()
        for x, y in self.data.train(epoch):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if self.losses is not None:
                self.losses.append(loss.item())
        self._sync()
        self.train.append(time.perf_counter() - t)
        self.sched.step()
        model.eval()
        with torch.no_grad():
            sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in self.val)
        self._sync()
        self.total.append(time.perf_counter() - t)

    def test(self) -> None:
        t = time.perf_counter()
        test = torch.utils.data.DataLoader(self.data.splits.test, batch_size=256)
        with torch.no_grad():
            sum(int((self.model(x.to(self.device)).argmax(1) == y.to(self.device)).sum())
                for x, y in test)
        self._sync()
        self.total.append(time.perf_counter() - t)

    def on_epoch(self, end) -> None:
        self.epoch(end.record["epoch"])


def check_losses(epochs: int, device: str, tmp: Path) -> list[str]:
    lines = []
    ref: list = []
    bare = BareLoop(settings(epochs, device)[0], ref)
    for epoch in range(epochs):
        bare.epoch(epoch)
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


def throughput(epochs: int, device: str, rounds: int, tmp: Path) -> tuple[list, dict]:
    """Per switch: (row, the per-epoch ratios dnnlab / bare of training images/s, the per-run
    ratios of whole-fit images/s). Each round is one dnnlab run with the bare loop beside it
    (BareLoop as its last callback: its time is taken out of dnnlab's fit)."""
    rows, costs, runs = {name: ([], []) for name, *_ in SWITCHES}, {}, 0
    base = settings(epochs, device)[0]
    for _ in range(rounds):
        for name, over, wandb, ck in SWITCHES:  # the switches interleaved, round by round
            s, config = settings(epochs, device, *over)
            bare = BareLoop(base)  # built first: building seeds the global RNG
            runs += 1
            d = tmp / f"run-{runs}"
            d.mkdir()
            out = dnnlab_run(s, config, d, wandb, ck, extra=[bare])
            bare.test()
            if name == SWITCHES[0][0]:
                for k, v in out["cost"].items():
                    costs.setdefault(k, []).append(v)
            # images/s ratio = bare seconds / dnnlab seconds (the same images on both sides)
            rows[name][0].extend(b * h["images_per_s"] / out["n_train"]
                                 for b, h in zip(bare.train, out["result"].history))
            # dnnlab's fit without the bare epochs run in its callback (bare.total[-1]: the test)
            rows[name][1].append(sum(bare.total) / (out["seconds"] - sum(bare.total[:-1])))
    return [(name, *v) for name, v in rows.items()], costs


def median_ci(v: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the k-th smallest and k-th largest
    values, k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2 (the whole range
    when n is too small for that)."""
    v, n = sorted(v), len(v)
    k, below = 0, 0.0
    while k < n // 2:
        below += math.comb(n, k) / 2 ** n  # P(Binomial(n, 1/2) = k)
        if below > (1 - level) / 2:
            break
        k += 1
    k = max(k, 1)
    return v[k - 1], v[n - k]


def quartiles(v: list[float]) -> tuple[float, float, float]:
    if len(v) < 2:
        return v[0], v[0], v[0]
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q1, q2, q3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 epochs, 3 rounds")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cpu, then cuda if any)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    a = ap.parse_args()
    epochs = a.epochs or (3 if a.quick else 10)
    rounds = a.rounds or (3 if a.quick else 7)
    devices = [a.device] if a.device else ["cpu"] + (["cuda"] if torch.cuda.is_available()
                                                      else [])
    import os

    print(f"parity: dnnlab.train.loop.fit vs a bare loop, {epochs} epochs of digits, "
          f"{rounds} rounds; {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine: noisy)")
    # wandb.init imports W&B's Launch package (wandb.sdk.launch: pydantic models whose
    # docstring extraction scans sys.modules, slower the more modules a process holds): an
    # import, paid by a run's first wandb.init; imported here so the fixed cost is without it
    t = time.perf_counter()
    import wandb.sdk.launch  # noqa: F401

    print(f"imports inside wandb.init (wandb.sdk.launch): {time.perf_counter() - t:.3f} s in "
          f"this process ({len(sys.modules)} modules loaded)")
    for device in devices:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            print(f"\n[{device}]")
            for line in check_losses(epochs, device, tmp):
                print("  " + line)
            rows, costs = throughput(epochs, device, rounds, tmp)
        print("  images/s vs the bare loop, side by side: per epoch's training (dnnlab's "
              f"train/images_per_s; the target, >= {TARGET}: median of every pair of epochs, "
              "its 95% confidence interval, the quartiles of single epochs) and over the whole "
              "fit (with each epoch's validation, pooling statistics, checkpoint, callbacks and "
              "the test; median and quartiles over the runs)")
        print(f"  {'setting':52s} {'per epoch':>9s} {'95% CI':>13s} {'quartiles':>13s}  "
              f"{'verdict':12s} {'whole fit':>9s} {'quartiles':>13s}")
        for name, per_epoch, whole in rows:
            lo, hi = median_ci(per_epoch)
            q1, q2, q3 = quartiles(per_epoch)
            verdict = ("meets" if lo >= TARGET else "below" if hi < TARGET else "not resolved")
            w1, w2, w3 = quartiles(whole)
            print(f"  {name:52s} {q2:9.3f} {lo:6.3f}-{hi:<6.3f} {q1:6.3f}-{q3:<6.3f}  "
                  f"{verdict:12s} {w2:9.3f} {w1:6.3f}-{w3:<6.3f}")
        print(f"  ({len(rows[0][1])} pairs of epochs, {len(rows[0][2])} runs per setting)")
        # beyond imports and the build (data, model): W&B, the checkpoint, the finish
        total = [sum(v) - b for v, b in zip(zip(*costs.values()), costs["build"])]
        # the first W&B run of a process starts W&B's service: what every `python -m
        # pipelines.train` pays; the later runs of this process find it running
        first = total[0]
        print("  fixed cost beyond imports (default settings, seconds; total: all but the build): "
              "the first run of the process (it starts W&B's service, as every new run does), "
              "then the median and quartiles of the later runs")
        for k, v in list(costs.items()) + [("total", total)]:
            q1, q2, q3 = quartiles(v[1:] or v)
            print(f"    {k:14s} {v[0]:7.3f}   later {q2:7.3f}  ({q1:.3f}-{q3:.3f})")
        later = quartiles(total[1:] or total)[1]
        print(f"  fixed cost of a run {first:.3f} s: {'<= 1 s' if first <= 1 else '> 1 s'} "
              f"(a run after another in the same process: {later:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
