"""dnnlab.train.logs: what a training run shows in W&B, driven in-process through a real
offline Tracker and read back from its `.wandb` file; and the replay of a resume
(dnnlab.run.resume.replay)."""
from __future__ import annotations

import json

import torch

from dnnlab.core.beta import BETA_INF_FLOAT
from dnnlab.run.resume import DISCARDED, replay
from dnnlab.run.settings import WandbConfig
from dnnlab.run.tracking import MIRROR, Tracker
from dnnlab.train.logs import BEST, METRICS, PROBE_COLUMNS, TrainLogs, read_probes
from dnnlab.train.model import SmoothMaxCNN
from dnnlab.train.records import EpochEnd, TrainResult
from tests.wandb_reader import find_runs, summarize

CKPT = "checkpoint.pt"


def _tracker(tmp_path, resume_id=None):
    return Tracker(WandbConfig(), tmp_path, job_type="train", name="train-test", config={},
                   resume_id=resume_id)


def _rows(step):
    return [{"layer": "features.0", "type": "Conv2d", "param": "weight", "max_abs_err": 1e-7 * step,
             "max_rel_err": 1e-6},
            {"layer": "features.4", "type": "SmoothMaxPool2d", "param": "input",
             "max_abs_err": 2e-7, "max_rel_err": 3e-6 * step}]


def _epoch(epoch, step, history):
    rec = {"epoch": epoch, "step": step, "train_loss": 1.0 / (epoch + 1), "train_accuracy": 0.5,
           "val_loss": 0.9, "val_accuracy": 0.6 + epoch / 10, "lr": 0.01, "images_per_s": 1e3}
    history.append(rec)
    return EpochEnd(rec, {"pool/entropy_rel": 0.5, "pool/features.4/beta": 4.0}, step,
                    list(history))


def _train(tmp_path, logs, epochs, start=0, history=None):
    """What fit emits: two steps per epoch, a probe at its last step, the epoch's end."""
    history = history if history is not None else []
    for e in range(start, epochs):
        for s in range(2 * e + 1, 2 * e + 3):
            logs.on_step(s, 1.0 / s, 0.01)
        logs.on_probe(2 * e + 2, _rows(2 * e + 2))
        torch.save({"model": logs.model.state_dict(), "epoch": e}, tmp_path / CKPT)
        logs.on_epoch(_epoch(e, 2 * e + 2, history))
    return history


def _result(history):
    best = max(history, key=lambda h: h["val_accuracy"])
    return TrainResult(test_accuracy=0.8, test_loss=0.5, val_accuracy=history[-1]["val_accuracy"],
                       best_val_accuracy=best["val_accuracy"], best_epoch=best["epoch"],
                       grad_entropy=0.5, argmax_mass=0.4, probe_max_abs_err=2e-7,
                       probe_max_rel_err=1e-5, epochs=len(history),
                       steps=history[-1]["step"], history=history, compile_seconds=1.5)


def test_a_run_through_train_logs(tmp_path):
    model = SmoothMaxCNN(1, 10, (4, 4, 4), beta=float("inf"))
    with _tracker(tmp_path) as tr:
        logs = TrainLogs(tr, model, "inf")
        history = _train(tmp_path, logs, 2)
        logs.finish(_result(history), {"model": {"pool": {"beta": float("inf")}}},
                    tmp_path / CKPT)
    w = summarize(find_runs(tmp_path)[0])
    assert {name for name, _, _ in METRICS} <= set(w["metrics"])
    assert w["config"]["beta"] == BETA_INF_FLOAT and w["config"]["log10_beta"] == 6.0
    assert [h["_step"] for h in w["history"]] == [1, 2, 3, 4]
    assert w["history"][1]["probe/max_rel_err"] == 3e-6 * 2 and w["history"][3]["epoch"] == 1
    assert w["history"][3]["test/accuracy"] == 0.8
    assert not any(k.endswith("/beta") for h in w["history"] for k in h)  # constant beta
    assert w["summary"]["train/compile_seconds"] == 1.5 and w["summary"]["steps"] == 4
    assert w["summary"]["best_val_accuracy"] == 0.7
    models = [a for a in w["artifacts"] if a.type == "model"]
    assert [[c.path for c in a.manifest.contents] for a in models] == [[BEST], [CKPT]]
    assert "best" in models[0].aliases and json.loads(models[1].metadata)["test_accuracy"] == 0.8
    assert json.loads(models[1].metadata)["config"]["model"]["pool"]["beta"] == "inf"
    assert torch.load(tmp_path / BEST, weights_only=True)["epoch"] == 1  # the best epoch
    assert not (tmp_path / "results.json").exists()  # the pipeline's job owns it
    probes = read_probes(tmp_path / "probes.csv")
    assert [r[0] for r in probes] == [2, 2, 4, 4] and len(PROBE_COLUMNS) == len(probes[0])


def test_resume_keeps_the_probes_and_the_history_up_to_the_checkpoint(tmp_path):
    model = SmoothMaxCNN(1, 10, (4, 4, 4), beta=4.0)
    with _tracker(tmp_path) as tr:
        history = _train(tmp_path, TrainLogs(tr, model, 4.0), 2)
        run_id = tr.run_id
    with open(tmp_path / MIRROR, "a") as f:
        f.write('{"train/loss": 0.1, "_st')  # a line cut by kill -9
    with _tracker(tmp_path, resume_id=run_id) as tr:
        replay(tr, 2)  # the checkpoint was taken at step 2 (after epoch 0)
        logs = TrainLogs(tr, model, 4.0, resumed_at=2)
        assert [r[0] for r in logs.probes] == [2, 2]
        history = _train(tmp_path, logs, 3, start=1, history=history[:1])
        logs.finish(_result(history), {}, tmp_path / CKPT)
    runs = [summarize(f) for f in find_runs(tmp_path)]
    assert {w["run"].run_id for w in runs} == {run_id}
    final = max(runs, key=lambda w: len(w["history"]))
    assert [h["_step"] for h in final["history"]] == [1, 2, 3, 4, 5, 6]
    assert [h["epoch"] for h in final["history"] if "val/accuracy" in h] == [0, 1, 2]
    assert [r[0] for r in read_probes(tmp_path / "probes.csv")] == [2, 2, 4, 4, 6, 6]
    mirror = [json.loads(line) for line in (tmp_path / MIRROR).read_text().splitlines()]
    assert [r["_step"] for r in mirror if "_step" in r] == [1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 6, 6, 6]
    discarded = (tmp_path / DISCARDED).read_text().splitlines()
    assert len(discarded) == 4 + 1 and discarded[-1].startswith('{"train/loss": 0.1, "_st')
    assert read_probes(tmp_path / "nothing.csv") == []
