"""The roofline (devices.py, roofline.py): an fp16 4096^3 GEMM on a100-80gb is compute-bound
at 2MNK / 312 TFLOP/s, an elementwise op memory-bound; the CPU calibrated and cached."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dnnlab.opcount import count_ops
from dnnlab.opcount.devices import DATASHEETS, calibrate, device
from dnnlab.opcount.roofline import roofline


def test_fp16_gemm_on_a100_is_compute_bound_at_its_datasheet_peak():
    n = 4096
    model = nn.Linear(n, n, bias=False)
    roof = roofline(count_ops(model, [n, n], dtype=torch.float16), "a100-80gb")
    (row,) = roof.rows
    assert row.bound == "compute" and row.flops == 2 * n ** 3
    assert row.seconds == pytest.approx(2 * n ** 3 / 312e12, rel=1e-12)
    assert row.bytes == 2 * 3 * n * n and roof.seconds == row.seconds
    fp32 = roofline(count_ops(model, [n, n]), "a100-80gb").rows[0]
    assert fp32.seconds == pytest.approx(2 * n ** 3 / 19.5e12)  # no tf32: CUDA cores
    assert roofline(count_ops(model, [n, n]), "a100-80gb", tf32=True).rows[0].seconds == \
        pytest.approx(2 * n ** 3 / 156e12)


def test_elementwise_is_memory_bound_at_the_bandwidth():
    n = 1 << 20
    roof = roofline(count_ops(nn.ReLU(), [n]), "h100-sxm")
    (row,) = roof.rows
    assert row.bound == "memory" and row.bytes == 2 * 4 * n
    assert row.seconds == pytest.approx(8 * n / 3.35e12)


def test_devices_and_calibration():
    assert set(DATASHEETS) == {"a100-80gb", "h100-sxm", "h200", "l4"}
    assert DATASHEETS["h200"].bandwidth > DATASHEETS["h100-sxm"].bandwidth
    cpu = calibrate(threads=1, n=256, copy_mb=16)
    assert cpu is calibrate(threads=1, n=256, copy_mb=16)  # cached
    assert 1e8 < cpu.peak["fp32"] < 1e13 and 1e8 < cpu.bandwidth < 1e12
    assert 0 < cpu.depthwise <= cpu.peak["fp32"] and cpu.overhead > 0
    with pytest.raises(ValueError, match="'tpu9'"):
        device("tpu9")


def test_depthwise_convs_run_at_the_depthwise_ceiling_others_at_the_peak():
    """Only a conv with one input channel per group (and several groups) is depthwise."""
    from dnnlab.opcount.devices import Device
    from dnnlab.opcount.roofline import is_depthwise

    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3, groups=2),
                          nn.Conv2d(8, 8, 1), nn.Conv2d(8, 1, 3))
    report = count_ops(model, [1, 8, 34, 34])
    assert [is_depthwise(r) for r in report.layers] == [True, False, False, False]
    dev = Device("x", {"fp32": 1e12, "tf32": 1e12, "bf16-fp16": 1e12}, 1e15, depthwise=1e9)
    rows = roofline(report, dev).rows
    assert [r.peak for r in rows] == [1e9, 1e12, 1e12, 1e12]
    dw = report.layers[0]
    assert rows[0].seconds == pytest.approx(dw.flops / 1e9) and rows[0].bound == "compute"
    # the datasheet GPUs have no depthwise figure: their depthwise convs run at the peak
    assert roofline(report, "l4").rows[0].peak == DATASHEETS["l4"].peak["fp32"]
    assert roofline(report, dev).summary()["depthwise_flops"] == 1e9
    assert roofline(report, "l4").summary()["depthwise_flops"] is None


def test_roofline_plot_of_a_small_network(tmp_path, drawn):
    from dnnlab.opcount.plots import plot_roofline

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 10))
    roof = roofline(count_ops(model, [2, 3, 16, 16]), "l4")
    assert {r.bound for r in roof.rows} <= {"compute", "memory"} and roof.seconds > 0
    png = plot_roofline(roof, tmp_path / "roofline.png", "small net on l4")
    assert png.is_file()
    [fig] = drawn()
    [ax] = fig.axes
    assert ax.get_title() == "small net on l4" and ax.get_xscale() == ax.get_yscale() == "log"
    d = roof.device
    roofs = ax.get_lines()  # min(peak, intensity * bandwidth), fp32 and the tensor roof
    assert [ln.get_label() for ln in roofs] == [f"{d.name} roof (fp32)",
                                                f"{d.name} roof (bf16-fp16)"]
    for line, prec in zip(roofs, ("fp32", "bf16-fp16")):
        x = line.get_xdata()
        assert list(line.get_ydata()) == pytest.approx(
            [min(d.peak[prec], xi * d.bandwidth) for xi in x])
    # a point per op: its intensity against its attained FLOP/s, coloured by its bound
    for coll, bound in zip(ax.collections, ("compute", "memory")):
        rows = [r for r in roof.rows if r.bound == bound and r.flops > 0]
        got = sorted(map(tuple, coll.get_offsets().tolist()))
        want = sorted((r.intensity, r.flops / r.seconds) for r in rows)
        assert len(got) == len(want) and all(g == pytest.approx(w) for g, w in zip(got, want))
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(
        [r for r in roof.rows if r.flops > 0])
