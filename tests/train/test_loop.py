"""dnnlab.train.loop: learning on real data, determinism, resume == uninterrupted, NaN stop,
checkpoints, probes and what the callbacks receive (and their W&B names, train.logs)."""
from __future__ import annotations

import math

import pytest
import torch

from dnnlab.core.errors import ConfigError, DnnlabError, ShapeError
from dnnlab.run.models import build_layers
from dnnlab.train.data import Batches, check_fits, synthetic
from dnnlab.train.logs import epoch_metrics
from dnnlab.train.loop import (
    Callback,
    EpochEnd,
    Interrupted,
    TrainResult,
    best_of,
    evaluate,
    fit,
    resolve_device,
    seed_everything,
    stopped,
)
from dnnlab.train.model import SmoothMaxCNN
from dnnlab.train.resume import Checkpoint
from dnnlab.train.settings import EarlyStopping, TrainerSettings


class Record(Callback):
    """Everything fit emits, in order."""

    def __init__(self):
        self.ends, self.probes, self.steps = [], [], []

    def on_step(self, step, loss, lr):
        self.steps.append(step)

    def on_probe(self, step, rows):
        self.probes.append((step, rows))

    def on_epoch(self, end):
        self.ends.append(end)


def _run(run_dir, epochs=3, total=None, resume=False, probe_every=0, lr=0.01, sgd=False,
         record=None, callbacks=(), checkpoint_every=0, batch=32, forward_hook=None, **trainer):
    """A seeded run as the pipeline does it; `total` epochs of cosine schedule (default epochs)."""
    seed_everything(0)
    splits = synthetic(samples=240, num_classes=4)
    model = SmoothMaxCNN(1, splits.num_classes, (4, 8, 8), beta=4.0, normalized=True)
    for cb in callbacks:  # StopAt: a Ctrl-C inside a step
        if hasattr(cb, "hook"):
            model.register_forward_pre_hook(cb.hook)
    if forward_hook is not None:
        model.register_forward_hook(forward_hook.forward_hook)
    opt = (torch.optim.SGD if sgd else torch.optim.Adam)(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total or epochs)
    settings = TrainerSettings(epochs=epochs, probe_every=probe_every, progress=False,
                               checkpoint_every=checkpoint_every, device="cpu", **trainer)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(run_dir / "checkpoint.pt", {"lr": lr, "total": total or epochs})
    if resume:
        ckpt.resume(lambda pinned: {"lr": lr, "total": total or epochs})
    return fit(model, Batches(splits, batch, 0), opt, sched, settings,
               callbacks=([record] if record else []) + list(callbacks), checkpoint=ckpt)


def _history(res: TrainResult) -> list:
    return [{k: v for k, v in h.items() if k != "images_per_s"} for h in res.history]


def test_learns_and_reports_everything(tmp_path):
    rec = Record()
    res = _run(tmp_path, epochs=4, probe_every=3, lr=0.05, record=rec)
    ends, probes = rec.ends, rec.probes
    assert res.test_accuracy > 0.7 and res.epochs == 4 and res.steps == 4 * math.ceil(144 / 32)
    assert [e.record["epoch"] for e in ends] == [0, 1, 2, 3] and ends[-1].history == res.history
    assert ends[-1].step == res.steps and ends[0].resumed_from_epoch is None
    assert rec.steps == list(range(1, res.steps + 1))  # log_every=1
    m = epoch_metrics(ends[-1])
    assert {"epoch", "trainer/global_step", "val/accuracy", "train/loss_epoch",
            "pool/entropy_rel", "pool/features.4/argmax_mass"} <= set(m)
    assert "trainer/resumed_from_epoch" not in m and not any(k.endswith("/beta") for k in m)
    assert m["trainer/global_step"] == res.steps and m["val/accuracy"] == res.val_accuracy
    assert [s for s, _ in probes] == list(range(3, res.steps + 1, 3))
    assert all({"layer", "param", "max_abs_err", "max_rel_err"} <= set(r)
               for _, rows in probes for r in rows)
    assert 0 < res.probe_max_rel_err < 1e-4 and res.probe_max_abs_err > 0
    assert 0 < res.grad_entropy < 1 and 0 < res.argmax_mass <= 1
    d = res.to_dict()
    assert "history" not in d and d["test_accuracy"] == res.test_accuracy
    assert "probe_max_rel_err" in d and "best_val_accuracy" in d
    assert res.best_val_accuracy == max(h["val_accuracy"] for h in res.history)
    assert res.history[res.best_epoch] is best_of(res.history)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 3 and set(ck) >= {"model", "optimizer", "scheduler", "rng", "history"}


def test_same_seed_same_metrics_and_resume_equals_uninterrupted(tmp_path):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b")
    assert _history(a) == _history(b) and a.test_accuracy == b.test_accuracy
    _run(tmp_path / "c", epochs=1, total=3)  # "killed" after epoch 0's checkpoint
    rec = Record()
    c = _run(tmp_path / "c", epochs=3, resume=True, record=rec)
    assert _history(c) == _history(a) and c.test_accuracy == a.test_accuracy
    assert rec.ends[0].resumed_from_epoch == 0
    assert epoch_metrics(rec.ends[0])["trainer/resumed_from_epoch"] == 0


class Events(Callback):
    """on_step and on_probe as one sequence of (kind, step)."""

    def __init__(self):
        self.events = []

    def on_step(self, step, loss, lr):
        self.events.append(("loss", step))

    def on_probe(self, step, rows):
        self.events.append(("probe", step))


@pytest.mark.parametrize("log_every", [1, 2])
def test_probe_rows_follow_their_steps_loss_in_step_order(tmp_path, log_every):
    """A probe's rows wait with the losses (no read of the losses is forced by a probe) and are
    handed over after its own step's loss, before any later step's: W&B's steps only grow."""
    ev = Events()
    res = _run(tmp_path, epochs=2, probe_every=3, log_every=log_every, callbacks=[ev])
    steps = [s for _, s in ev.events]
    assert steps == sorted(steps)
    assert [s for k, s in ev.events if k == "probe"] == list(range(3, res.steps + 1, 3))
    assert [s for k, s in ev.events if k == "loss"] == list(range(log_every, res.steps + 1,
                                                                   log_every))
    for i, (kind, s) in enumerate(ev.events):
        if kind == "probe" and s % log_every == 0:
            assert ev.events[i - 1] == ("loss", s)
    assert 0 < res.probe_max_rel_err < 1e-4


class StopAt(Callback):
    """Ctrl-C during a given step's forward (after the step before's checkpoint_every save), as
    a signal arrives: a forward pre-hook counting the training forwards."""

    def __init__(self, step):
        self.step, self.seen = step, 0

    def on_start(self, state):
        self.seen = state.step

    def hook(self, module, args):
        if module.training:
            self.seen += 1
            if self.seen == self.step:
                raise KeyboardInterrupt


def test_checkpoint_every_resumes_inside_an_epoch_as_if_uninterrupted(tmp_path):
    """5 steps an epoch; saved every 3 steps; stopped at step 8 (inside epoch 1, after the
    save at step 6): the resume starts at epoch 1's 2nd batch and ends like one run."""
    a = _run(tmp_path / "a")
    with pytest.raises(Interrupted) as err:
        _run(tmp_path / "b", checkpoint_every=3, callbacks=[StopAt(8)])
    assert (err.value.epoch, err.value.step) == (1, 8)
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step"], ck["partial"]["steps"]) == (0, 6, 1)
    rec = Record()
    b = _run(tmp_path / "b", resume=True, record=rec, checkpoint_every=3)
    assert rec.steps[0] == 7 and rec.ends[0].record["epoch"] == 1
    assert _history(b) == _history(a) and b.test_accuracy == a.test_accuracy
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["partial"] is None


def test_resume_without_a_checkpoint_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.resume=true: no checkpoint in"):
        _run(tmp_path, resume=True)


def test_nan_loss_stops_with_the_step_and_last_checkpoint(tmp_path):
    with pytest.raises(DnnlabError, match=r"^loss is nan at epoch 0 step \d+ \(optimizer.lr="
                                          r"1e\+08\); stopped. Last good checkpoint: none"):
        _run(tmp_path, lr=1e8, sgd=True)


class NanAt(Callback):
    """The model's output turns NaN from a given training step on (a forward hook)."""

    def __init__(self, step):
        self.step, self.seen = step, 0

    def hook(self, module, args):
        if module.training:
            self.seen += 1

    def forward_hook(self, module, args, out):
        return out * math.nan if module.training and self.seen >= self.step else out


def test_a_nan_read_later_names_its_step_and_never_reaches_a_checkpoint(tmp_path):
    """5 steps an epoch, saved every 3 steps: a NaN loss at step 7 (epoch 1) is read at the
    latest before the save at step 9, which never happens; the checkpoint is step 6's."""
    nan = NanAt(7)
    rec = Record()
    lr = 0.01 * (1 + math.cos(math.pi * 1 / 3)) / 2  # cosine annealing over 3 epochs, epoch 1
    with pytest.raises(DnnlabError, match=rf"^loss is nan at epoch 1 step 7 \(optimizer.lr="
                                          rf"{lr:g}\); stopped. Last good checkpoint: "
                                          r".*checkpoint.pt"):
        _run(tmp_path, checkpoint_every=3, callbacks=[nan], record=rec, forward_hook=nan)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 6 and rec.steps == list(range(1, 7))  # every finite loss logged


def test_devices_and_fit_checks():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match=r"^trainer.device: unknown device 'tpu7'"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^trainer.device=cuda: CUDA is not available"):
            resolve_device("cuda")
    splits = synthetic(samples=20)
    check_fits(SmoothMaxCNN(1, 4, (4, 4, 4)), splits, "smoothmax_cnn", "synthetic", 4)
    with pytest.raises(ConfigError, match=r"^data.num_classes=3: data=synthetic has labels "
                                          r"0 .. 3 \(4 classes\); set data.num_classes=4$"):
        check_fits(SmoothMaxCNN(1, 3, (4, 4, 4)), splits, "smoothmax_cnn", "synthetic", 3)
    lenet = build_layers([{"type": "Conv2d", "in_channels": 1, "out_channels": 6,
                           "kernel_size": 5}, {"type": "AvgPool2d", "kernel_size": 2},
                          {"type": "Conv2d", "in_channels": 6, "out_channels": 16,
                           "kernel_size": 5}])
    with pytest.raises(ShapeError, match=r"^model=lenet5 cannot take data=synthetic images "
                                         r"\[1, 8, 8\]: layer '2'"):
        check_fits(lenet, splits, "lenet5", "synthetic", 4)


def test_evaluate_counts_correct_predictions():
    x = torch.eye(3).repeat(2, 1)  # (6, 3)
    y = torch.tensor([0, 1, 2, 0, 0, 0])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    out = evaluate(torch.nn.Identity(), loader, torch.device("cpu"))
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["loss"] == pytest.approx(torch.nn.functional.cross_entropy(x, y).item())


def test_epoch_end_metrics_skip_text():
    e = EpochEnd({"epoch": 0, "step": 7, "val_accuracy": 0.5, "lr": 0.1, "note": "x"},
                 {"pool/entropy_rel": 0.3, "pool/f.4/beta": 4.0}, 7, [],
                 resumed_from_epoch=None)
    assert epoch_metrics(e) == {"epoch": 0, "trainer/global_step": 7, "val/accuracy": 0.5,
                                "pool/entropy_rel": 0.3}  # lr is per step; beta is constant
    e.learnable, e.resumed_from_epoch = True, 0
    m = epoch_metrics(e)
    assert m["pool/f.4/beta"] == 4.0 and m["trainer/resumed_from_epoch"] == 0


def test_the_progress_bar_and_on_epoch_take_fits_records(tmp_path):
    from rich.console import Console

    from dnnlab.train.progress import EpochBar
    from dnnlab.train.records import OnEpoch

    seen, console = [], Console(file=open(tmp_path / "bar.txt", "w"), width=120)
    with EpochBar(2, console) as bar:
        res = _run(tmp_path, epochs=2, callbacks=[bar, OnEpoch(seen.append)])
    assert [e.record for e in seen] == res.history
    assert bar.bar.tasks[0].completed == 2


def test_micro_batches_add_up_to_the_batch(tmp_path):
    """trainer.accumulate: batch 16 x 2 (and 8 x 4) makes batch 32's steps, the last shorter
    group included (144 samples: 4 steps of 32 and one of 16)."""
    a = _run(tmp_path / "a", epochs=2)
    for batch, k in ((16, 2), (8, 4)):
        b = _run(tmp_path / f"b{k}", epochs=2, batch=batch, accumulate=k)
        assert b.steps == a.steps == 2 * 5
        assert b.test_loss == pytest.approx(a.test_loss, rel=1e-5)
        assert [h["train_loss"] for h in b.history] == pytest.approx(
            [h["train_loss"] for h in a.history], rel=1e-5)


def test_grad_clip_bounds_each_step():
    """trainer.grad_clip: with SGD (no momentum) every step moves the parameters by at most
    lr x the clip norm."""
    seed_everything(0)
    splits = synthetic(samples=240, num_classes=4)
    model = SmoothMaxCNN(1, splits.num_classes, (4, 8, 8), beta=4.0, normalized=True)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, Batches(splits, 32, 0), opt, None, TrainerSettings(
        epochs=1, probe_every=0, progress=False, device="cpu", grad_clip=1e-3,
        limit_batches=1))
    moved = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), before)))
    assert 0 < moved <= 0.1 * 1e-3 * (1 + 1e-5)


def test_early_stopping_rule_and_run(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=2, mode="min")
    h = [{"val_loss": v} for v in (1.0, 0.5, 0.6, 0.55)]
    assert stopped(h, es) and not stopped(h[:3], es)
    assert not stopped(h, EarlyStopping(monitor="val_loss", patience=3))
    assert not stopped([{"val_accuracy": v} for v in (0.5, 0.6, 0.7)],
                       EarlyStopping(monitor="val_accuracy", patience=1, mode="max"))
    assert not stopped(h, EarlyStopping())  # off
    res = _run(tmp_path, epochs=40, lr=0.05,
               early_stopping=EarlyStopping(monitor="val_loss", patience=2))
    assert res.stopped_epoch is not None and len(res.history) == res.stopped_epoch + 1 < 40
    assert stopped(res.history, EarlyStopping(monitor="val_loss", patience=2))
    again = _run(tmp_path, epochs=40, lr=0.05, resume=True,
                 early_stopping=EarlyStopping(monitor="val_loss", patience=2))
    assert again.stopped_epoch == res.stopped_epoch and again.history == res.history


def test_limit_and_overfit_batches(tmp_path):
    res = _run(tmp_path / "a", epochs=1, limit_batches=2)
    assert res.steps == 2 and res.history[0]["step"] == 2
    fit_one = _run(tmp_path / "b", epochs=80, lr=0.05, overfit_batches=1)
    assert fit_one.steps == 80 and fit_one.history[-1]["train_accuracy"] == 1.0
    assert fit_one.test_accuracy == 1.0  # tested on the batch it learned


def test_fp16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is allowed")
    with pytest.raises(ConfigError, match=r"^trainer.precision=fp16: float16 training needs "):
        _run(tmp_path, epochs=1, precision="fp16")


def test_fit_reads_in_one_screen():
    """Issue 32's shape: `fit` starts the state, runs an epoch, saves, repeats (<= 60 lines)."""
    import inspect

    assert len(inspect.getsource(fit).splitlines()) <= 60
