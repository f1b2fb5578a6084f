"""The GPU checks in one go, for a machine with a CUDA device (one is enough):

    python benchmarks/gpu_checks.py [--quick]

1. the device-only tests (tests/train/test_cuda.py: fp16 with a GradScaler, bf16, DDP on the
   GPU), which skip on a CPU machine;
2. pipelines.train on CUDA in float32, bf16 and fp16 (3 epochs of digits): each bf16 / fp16
   test accuracy against float32's (target: within 0.02, finite losses);
3. DDP on 1 GPU through torchrun (nccl): its test accuracy against the plain run's (within 0.01);
4. trainer.compile=true on CUDA (same test accuracy within 0.01, compile time printed);
5. benchmarks/train.py --quick --no-compile --device cuda (the eager ratios on the GPU);
   benchmarks/parity.py --quick --device cuda (dnnlab's loop against a bare one: equal losses
   to 1e-6, the images/s ratio of the default settings; target >= 0.95);
6. opcount's memory prediction against torch.cuda.max_memory_allocated of a training step
   (resnet18, batch 32, Adam; target: within 5%).

Every check prints its figure and PASS / FAIL in one table; the exit status is 1 if any
failed. Run dirs go to a temporary directory. Without CUDA it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "pipelines.train", "trainer.device=cuda", "trainer.epochs=3",
         "trainer.progress=false", "wandb.mode=disabled"]


def run(cmd: list[str], timeout: int = 900) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr)[-2000:], time.perf_counter() - t0


def train(out: Path, name: str, *overrides: str, launcher: list[str] | None = None) -> dict:
    d = out / name
    code, tail, secs = run((launcher or TRAIN[:3]) + TRAIN[3:] + list(overrides)
                           + [f"hydra.run.dir={d}"])
    if code != 0:
        return {"ok": False, "why": tail.strip().splitlines()[-1] if tail.strip() else "?"}
    r = json.loads((d / "results.json").read_text())
    losses = [h["train_loss"] for h in r["history"]]
    return {"ok": all(v == v and abs(v) < float("inf") for v in losses), "acc": r["test_accuracy"],
            "seconds": secs, "compile": r.get("compile_seconds")}


def memory_row() -> list:
    """opcount's memory prediction (fake CUDA tensors) against torch.cuda.max_memory_allocated
    of the same training step on the GPU: resnet18, batch 32, Adam (target: within 5%)."""
    import torchvision

    from dnnlab.opcount.memory_measure import measure_memory
    from dnnlab.opcount.memory_predict import memory_of

    t0 = time.perf_counter()
    with torch.device("meta"):
        model = torchvision.models.resnet18()
    shape = [32, 3, 224, 224]
    pred = memory_of(model, shape, optimizer="adam", device="cuda")
    meas = measure_memory(model, shape, optimizer="adam", device="cuda")
    peak = meas.measured["cuda_peak_bytes"]
    err = pred.peak_bytes / peak - 1
    return ["opcount memory resnet18 b32 adam vs max_memory_allocated",
            f"predicted {pred.peak_bytes / 2**20:,.1f} MB, measured {peak / 2**20:,.1f} MB "
            f"({err:+.2%}); live tensors {meas.peak_bytes / 2**20:,.1f} MB",
            f"{time.perf_counter() - t0:.0f} s", abs(err) <= 0.05]


def parity_row() -> list:
    """benchmarks/parity.py on the GPU: the losses equal to 1e-6 with probes off and on, and the
    default settings' images/s against the bare loop's (its verdict: meets, below, not resolved)."""
    code, tail, secs = run([sys.executable, "benchmarks/parity.py", "--quick", "--device",
                            "cuda"], timeout=1200)
    lines = tail.splitlines()
    equal = [x for x in lines if x.strip().startswith("losses,")]
    default = next((x.split()[-1] for x in lines if x.strip().startswith("default")), "?")
    ratio = next((x.split(")")[-1].split()[0] for x in lines
                  if x.strip().startswith("default")), "?")
    ok = code == 0 and len(equal) == 2 and all("EQUAL" in x for x in equal)
    return ["benchmarks/parity.py --device cuda", f"losses {'equal' if ok else 'DIFFERENT'}; "
            f"default images/s {ratio}x the bare loop's ({default})", f"{secs:.0f} s",
            ok and default != "below"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the benchmark (5.)")
    args = ap.parse_args()
    console = Console(width=160)
    if not torch.cuda.is_available():
        console.print("no CUDA device on this machine: nothing to check (exit 2)")
        return 2
    rows = []
    code, tail, secs = run([sys.executable, "-m", "pytest", "-q", "tests/train/test_cuda.py"])
    rows.append(["device-only tests", tail.strip().splitlines()[-1], f"{secs:.0f} s",
                 code == 0])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        ref = train(out, "fp32")
        rows.append(["float32 on CUDA", f"test accuracy {ref.get('acc')}",
                     f"{ref.get('seconds', 0):.0f} s", ref["ok"]])
        for prec in ("bf16", "fp16"):
            r = train(out, prec, f"trainer.precision={prec}")
            ok = r["ok"] and ref["ok"] and abs(r["acc"] - ref["acc"]) <= 0.02
            rows.append([f"precision {prec}", f"test accuracy {r.get('acc')} vs float32 "
                         f"{ref.get('acc')} (<= 0.02)" if r["ok"] else r["why"],
                         f"{r.get('seconds', 0):.0f} s", ok])
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node=1", "-m", "pipelines.train"]
        r = train(out, "ddp1", launcher=launcher)
        ok = r["ok"] and ref["ok"] and abs(r["acc"] - ref["acc"]) <= 0.01
        rows.append(["DDP on 1 GPU (torchrun, nccl)", f"test accuracy {r.get('acc')}"
                     if r["ok"] else r["why"], f"{r.get('seconds', 0):.0f} s", ok])
        r = train(out, "compile", "trainer.compile=true")
        ok = r["ok"] and ref["ok"] and abs(r["acc"] - ref["acc"]) <= 0.01
        rows.append(["torch.compile on CUDA", f"test accuracy {r.get('acc')}, compiling "
                     f"{r.get('compile') or 0:.1f} s" if r["ok"] else r["why"],
                     f"{r.get('seconds', 0):.0f} s", ok])
        # the cost model on the GPU: every leaf timed there against the named device's roofline
        name = torch.cuda.get_device_name(0).lower()
        roof = next((d for d in ("h200", "h100-sxm", "a100-80gb", "l4")
                     if d.split("-")[0] in name), "a100-80gb")
        t0 = time.perf_counter()
        code, tail, _ = run([sys.executable, "-m", "pipelines.opcount", "model=resnet18",
                             f"roofline={roof}", "measure=true", "wandb.mode=disabled",
                             f"hydra.run.dir={out / 'opcount'}"])
        res = json.loads((out / "opcount" / "results.json").read_text()) if code == 0 else {}
        g = res.get("measured_cuda") or {}
        rows.append([f"opcount resnet18 measured on CUDA vs {roof}",
                     f"spearman {g.get('spearman')}, median measured/predicted "
                     f"{g.get('median_ratio')}" if g else tail.strip()[-200:],
                     f"{time.perf_counter() - t0:.0f} s", bool(g) and g["spearman"] >= 0.5])
    rows.append(memory_row())
    if not args.quick:
        code, tail, secs = run([sys.executable, "benchmarks/train.py", "--quick", "--no-compile",
                                "--device", "cuda"], timeout=1800)
        last = tail.strip().splitlines()[-1] if tail.strip() else "?"
        rows.append(["benchmarks/train.py --device cuda", last, f"{secs:.0f} s", code == 0])
    rows.append(parity_row())
    t = Table(title=f"GPU checks on {torch.cuda.get_device_name(0)}")
    for c in ("check", "measured", "time", "verdict"):
        t.add_column(c)
    for name, what, secs, ok in rows:
        t.add_row(name, what, secs, "PASS" if ok else "FAIL")
    console.print(t)
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
