"""oneDNN's LSTM workspace (docs/math.md (4)) against what the CPU kernel returns, an LSTM
step predicted on fake tensors against the same step measured on CPU tensors, and the scratch
its backward holds inside the call (4b) against the measured resident set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from dnnlab.opcount.memory_measure import measure_memory
from dnnlab.opcount.memory_predict import memory_of
from dnnlab.opcount.rnn_workspace import (
    good_ld,
    lstm_backward_scratch_bytes,
    lstm_workspace_bytes,
    mkldnn_rnn_workspace,
    size_fake_workspace,
)

# sizes around oneDNN's roundings: 16 floats / 32 bf16 a line, 256 elements (64 hidden units
# make 4H = 256 gates), a page
SIZES = st.one_of(st.integers(1, 160), st.sampled_from([16, 32, 63, 64, 65, 128, 256, 257]))


def _layer_args(seq, batch, inp, hidden, dtype, bias=True):
    """The arguments nn.LSTM passes to aten.mkldnn_rnn_layer for one layer, one direction."""
    w0, w1 = torch.randn(4 * hidden, inp, dtype=dtype), torch.randn(4 * hidden, hidden,
                                                                    dtype=dtype)
    b = [torch.randn(4 * hidden, dtype=dtype) for _ in range(2)]
    h, c = torch.zeros(batch, hidden, dtype=dtype), torch.zeros(batch, hidden, dtype=dtype)
    return (torch.randn(seq, batch, inp, dtype=dtype), w0, w1, *b, h, c, False, [], 2, hidden,
            1, bias, False, False, True)


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(1, 40), batch=SIZES, inp=SIZES, hidden=SIZES,
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_workspace_formula_is_the_cpu_kernels_workspace(seq, batch, inp, hidden, dtype):
    """Reference: the workspace tensor the real CPU op returns (plain torch)."""
    args = _layer_args(seq, batch, inp, hidden, dtype)
    real = torch.ops.aten.mkldnn_rnn_layer(*args)[3]
    assert real.dtype == torch.uint8
    assert mkldnn_rnn_workspace(args) == real.numel()
    with FakeTensorMode():  # the fake kernel's workspace is empty: what rnn_workspace fixes
        fake_args = _layer_args(seq, batch, inp, hidden, dtype)
        func = torch.ops.aten.mkldnn_rnn_layer.default
        res = func(*fake_args)
        assert res[3].numel() == 0
        fixed, unsized = size_fake_workspace(func, fake_args, res)
    assert unsized is None and fixed[3].numel() == real.numel()


def test_good_ld_pads_to_64_bytes_and_away_from_multiples_of_256():
    assert good_ld(1, 4) == 16 and good_ld(17, 4) == 32 and good_ld(17, 2) == 32
    assert good_ld(256, 4) == 272 and good_ld(256, 2) == 288 and good_ld(240, 4) == 240
    # one page-rounded region per buffer: at least 7 pages even for one unit
    assert lstm_workspace_bytes(1, 1, 1, 1) == 7 * 4096


def test_no_grad_and_real_tensors_pass_through_and_other_modes_stay_unsized():
    func = torch.ops.aten.mkldnn_rnn_layer.default
    args = _layer_args(3, 2, 4, 8, torch.float32)
    res = func(*args)
    assert size_fake_workspace(func, args, res) == (res, None)  # real: untouched
    with FakeTensorMode():
        fake_args = _layer_args(3, 2, 4, 8, torch.float32)
        with torch.no_grad():
            res = func(*fake_args)
            assert size_fake_workspace(func, fake_args, res)[0][3].numel() == 0
        gru = (*fake_args[:9], 3, *fake_args[10:])  # mode 3: GRU, which PyTorch never sends
        assert mkldnn_rnn_workspace(gru) is None
        assert size_fake_workspace(func, gru, func(*fake_args))[1] == "mkldnn_rnn_layer"


@settings(max_examples=8, deadline=None)
@given(seq=st.integers(1, 12), batch=st.integers(1, 9), inp=st.integers(1, 40),
       hidden=st.integers(1, 70), layers=st.integers(1, 3), bidirectional=st.booleans(),
       batch_first=st.booleans(), bias=st.booleans(),
       optimizer=st.sampled_from(["sgd", "adam", None]),
       precision=st.sampled_from(["32", "bf16"]), train=st.booleans())
def test_lstm_step_predicted_on_fake_tensors_is_the_measured_step(
        seq, batch, inp, hidden, layers, bidirectional, batch_first, bias, optimizer,
        precision, train):
    """An nn.LSTM runs oneDNN's kernel on the CPU: with the workspace sized by (4), the
    predicted step holds exactly the tensors the measured one holds, at every category."""
    torch.manual_seed(0)
    model = nn.LSTM(inp, hidden, layers, bias=bias, batch_first=batch_first,
                    bidirectional=bidirectional)
    shape = [batch, seq, inp] if batch_first else [seq, batch, inp]
    kw = dict(optimizer=optimizer, precision=precision, train=train)
    pred, meas = memory_of(model, shape, **kw), measure_memory(model, shape, **kw)
    assert pred.peak_bytes == meas.peak_bytes
    assert pred.by_category == meas.by_category
    assert pred.saved_by_module == meas.saved_by_module
    assert pred.end_by_category == meas.end_by_category
    # the tensors are exact; only a bf16 backward's scratch inside the call is not sized
    assert [c.split(":")[1].split(" has")[0] for c in pred.caveats] == (
        [" aten.mkldnn_rnn_layer_backward"] if precision == "bf16" and train else [])


def test_lstm_workspace_is_saved_for_backward_per_layer_and_direction():
    """The bytes the LSTM saves for backward include one (4) workspace per layer and direction
    (and none under no_grad)."""
    model = nn.LSTM(32, 64, num_layers=2, bidirectional=True)
    r = memory_of(model, [16, 4, 32], optimizer="sgd")
    ws = 2 * lstm_workspace_bytes(16, 4, 32, 64) + 2 * lstm_workspace_bytes(16, 4, 128, 64)
    outputs = 4 * 16 * 4 * 64 * 4  # each layer and direction's (T, B, H) output, float32
    assert r.saved_by_module[""] >= ws + outputs
    inf = memory_of(model, [16, 4, 32], train=False)
    assert inf.peak_bytes < ws


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
def test_gru_and_rnn_need_no_workspace_and_match(cls):
    model = cls(16, 32, 2)
    pred = memory_of(model, [10, 3, 16], optimizer="adam")
    meas = measure_memory(model, [10, 3, 16], optimizer="adam")
    assert not any(t[1] == "mkldnn_rnn_layer" for t in meas.timeline)
    assert pred.peak_bytes == meas.peak_bytes and pred.caveats == []


def test_an_lstm_predicted_on_meta_says_the_cpu_runs_other_kernels():
    """On plain meta tensors nn.LSTM takes torch's step-by-step path, not oneDNN's: the
    prediction differs from the CPU's step and the report says so; with fake CPU tensors (the
    default) it is exact and says nothing."""
    model = nn.LSTM(32, 64, 2)
    meta = memory_of(model, [16, 4, 32], optimizer="sgd", device="meta")
    meas = measure_memory(model, [16, 4, 32], optimizer="sgd")
    if any(t[1] == "mkldnn_rnn_layer" for t in meas.timeline):
        assert meta.peak_bytes != meas.peak_bytes
    assert meta.caveats and "on meta an nn.LSTM" in meta.caveats[0]
    assert memory_of(nn.GRU(32, 64), [16, 4, 32], device="meta").caveats == []


def test_lstm_backward_scratch_by_hand():
    """(4b) at T=3, B=2, I=5, H=4: the gates' scratch 3 * 2 * ld(16, 4) * 4 = 384 bytes (16
    floats are one 64-byte line), the reordered weights and their float32 gradients
    16 * (5 + 4) * (4 + 4) = 1,152, and a non-contiguous grad_output's copy 3 * 2 * 4 * 4 = 96;
    at H = 64 the 256 gates get a line more (ld 272)."""
    assert lstm_backward_scratch_bytes(3, 2, 5, 4) == 384 + 1152
    assert lstm_backward_scratch_bytes(3, 2, 5, 4, grad_output_copy=True) == 384 + 1152 + 96
    assert lstm_backward_scratch_bytes(1, 1, 1, 64) == 272 * 4 + 256 * 65 * 8


@pytest.mark.parametrize("batch_first", [False, True])
def test_process_peak_adds_the_scratch_of_the_op_running(batch_first):
    """The predicted process peak is the most of live tensors after an op plus that op's
    scratch: an LSTM's backward calls add (4b) for their layer (with batch_first the last
    layer's gradient arrives transposed, and RNN.cpp copies it), a conv net adds nothing; the
    peak's place stays the live tensors' peak."""
    model = nn.LSTM(6, 8, 2, batch_first=batch_first)
    r = memory_of(model, [3, 5, 6] if batch_first else [5, 3, 6], optimizer="sgd")
    backs = [i for i, (_, op, _, _) in enumerate(r.timeline) if op == "mkldnn_rnn_layer_backward"]
    assert len(backs) == 2  # the last layer's (8 inputs) first, then the first layer's (6)
    extra = {backs[0]: lstm_backward_scratch_bytes(5, 3, 8, 8, grad_output_copy=batch_first),
             backs[1]: lstm_backward_scratch_bytes(5, 3, 6, 8)}
    levels = [live + extra.get(i, 0) for i, (*_, live) in enumerate(r.timeline)]
    assert r.process_peak_bytes == max(levels) > r.peak_bytes
    assert r.scratch_bytes == extra[levels.index(max(levels))]
    assert r.process_growth_bytes == r.process_peak_bytes - r.start_bytes
    assert r.to_dict()["process_peak_bytes"] == r.process_peak_bytes
    assert r.timeline[r.peak_at["index"]][3] == r.peak_bytes and r.caveats == []
    conv = memory_of(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), [2, 3, 8, 8])
    assert conv.process_peak_bytes == conv.peak_bytes and conv.scratch_bytes == 0
    meas = measure_memory(model, [5, 3, 6], optimizer="sgd")
    assert meas.process_peak_bytes is None and "process_peak_bytes" not in meas.to_dict()


def test_a_bf16_lstm_backward_says_its_scratch_is_not_sized():
    """(4b) is measured in float32; a bfloat16 LSTM's backward holds other scratch (a quarter
    of the gates' term, other weight copies): the report says its process peak leaves it out."""
    r = memory_of(nn.LSTM(6, 8), [5, 3, 6], optimizer="sgd", precision="bf16")
    assert r.scratch_bytes == 0 and r.process_peak_bytes == r.peak_bytes
    assert [c for c in r.caveats if "mkldnn_rnn_layer_backward" in c and "(4b)" in c]


@pytest.mark.skipif(not sys.platform.startswith("linux") or "MALLOC_PERTURB_" in os.environ,
                    reason="glibc and /proc: Linux, and no perturbing set for the process")
def test_touched_allocations_make_an_unwritten_block_resident_and_stop_after():
    """torch.empty's pages count in the RSS only once written; inside touched_allocations
    glibc writes them as it hands them out, so the RSS grows by the block at once; after it,
    a new block is not written again."""
    from dnnlab.opcount.memory_measure import rss_bytes, touched_allocations

    n = 64 * 2 ** 20

    def growth():
        before = rss_bytes()
        t = torch.empty(n, dtype=torch.uint8)
        return rss_bytes() - before, t

    untouched, a = growth()
    with touched_allocations() as ok:
        touched, b = growth()
    if not ok:
        pytest.skip("no glibc mallopt here")
    after, c = growth()
    assert untouched < n // 4 and touched > 0.95 * n and after < n // 4
    del a, b, c


@pytest.mark.parametrize("env,value", [("0x5a", 0x5A), ("90", 90), ("abc", 0), ("", 0),
                                       ("511", 255)])
def test_perturbing_comes_back_as_glibc_reads_the_environment(monkeypatch, env, value):
    from dnnlab.opcount.memory_measure import _perturb_env

    monkeypatch.setenv("MALLOC_PERTURB_", env)
    assert _perturb_env() == value


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc: Linux")
def test_lstm_rss_growth_is_the_predicted_process_growth():
    """A 2-layer LSTM step (200 steps, batch 8, 512 hidden) in a fresh process with glibc's mmap
    threshold fixed, as benchmarks/opcount_memory.py runs its rows: the RSS growth is within 15%
    of the predicted process growth (tensors and (4b)'s scratch), and the tensors alone fall
    short of it by more than that: the scratch is real memory."""
    code = textwrap.dedent("""
        import json, torch
        from dnnlab.opcount.memory_measure import measure_memory
        from dnnlab.opcount.memory_predict import memory_of
        m = torch.nn.LSTM(256, 512, 2)
        p = memory_of(m, [200, 8, 256], optimizer="sgd")
        r = measure_memory(m, [200, 8, 256], optimizer="sgd")
        print(json.dumps([p.growth_bytes, p.process_growth_bytes, r.measured["rss_growth_bytes"],
                          r.measured["rss_touched"]]))
    """)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    tensors, process, rss, touched = json.loads(out.strip().splitlines()[-1])
    assert touched and abs(process / rss - 1) <= 0.15, (process, rss)
    assert tensors / rss - 1 < -0.15, (tensors, rss)
