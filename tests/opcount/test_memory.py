"""A training step's memory (memory_of on fake tensors, measure_memory on real ones) against
closed forms written by hand, and the prediction against the measurement on small models."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dnnlab.core.errors import ConfigError
from dnnlab.opcount.memory_measure import measure_memory
from dnnlab.opcount.memory_predict import memory_of
from dnnlab.opcount.memory_report import memory_figure, saved_rollup
from dnnlab.opcount.memory_track import CATEGORIES

F32 = 4


def chain(d0: int, d1: int, d2: int, d3: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d0, d1), nn.ReLU(), nn.Linear(d1, d2), nn.ReLU(),
                         nn.Linear(d2, d3))


def param_bytes(dims) -> int:
    return F32 * sum(a * b + b for a, b in zip(dims, dims[1:]))


@pytest.mark.parametrize("optimizer,states", [("sgd", 1), ("adam", 2), ("adamw", 2),
                                              (None, 0)])
def test_parameters_gradients_and_states_are_their_closed_forms(optimizer, states):
    dims = (64, 512, 32, 10)
    with torch.device("meta"):
        model = chain(*dims)
    r = memory_of(model, [8, 64], optimizer=optimizer)
    p = param_bytes(dims)
    steps = 6 * F32 if optimizer in ("adam", "adamw") else 0  # Adam's `step`: a float32 scalar
    assert r.by_category["parameters"] == p
    assert r.start_bytes == p + states * p + steps + 8 * 64 * F32  # + the input
    assert r.by_category["optimizer"] == states * p + steps
    assert r.end_by_category["parameters"] == p
    assert r.end_by_category["gradients"] == p  # every gradient, once
    assert r.end_by_category["optimizer"] == states * p + steps
    assert 0 < r.by_category["gradients"] <= p


def test_linear_relu_chain_activations_by_hand():
    """Each module saves for backward what autograd needs: a Linear its input, a ReLU its
    output (which the next Linear saves too: counted once); the inference peak (no_grad) holds
    the input, a Linear's output and the ReLU's output of the widest layer."""
    B, dims = 8, (64, 512, 32, 10)
    with torch.device("meta"):
        model = chain(*dims)
    r = memory_of(model, [B, dims[0]], optimizer="sgd")
    assert r.saved_by_module["0"] == B * dims[0] * F32  # x
    assert r.saved_by_module["1"] == B * dims[1] * F32  # relu(h1), also Linear 2's input
    assert r.saved_by_module["3"] == B * dims[2] * F32  # relu(h2), also Linear 3's input
    assert "2" not in r.saved_by_module and "4" not in r.saved_by_module
    inf = memory_of(model, [B, dims[0]], train=False)
    assert inf.by_category["activations"] == F32 * B * (dims[0] + 2 * dims[1])
    assert inf.peak_bytes == param_bytes(dims) + F32 * B * (dims[0] + 2 * dims[1])
    assert inf.peak_at["phase"] == "forward" and inf.peak_at["module"] == "1"
    assert inf.by_category["gradients"] == inf.by_category["optimizer"] == 0
    roll = saved_rollup(r.saved_by_module, ["", "0", "1"])
    assert roll["0"] == B * dims[0] * F32 and roll[""] == sum(r.saved_by_module.values())


class SmallCNN(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(c, 2 * c, 3), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * c, 10)

    def forward(self, x):  # (B, 3, H, W)
        return self.head(self.body(x))


def _close(pred, meas, key):
    p, m = pred.by_category[key], meas.by_category[key]
    assert abs(p - m) <= 0.05 * max(m, 1), (key, p, m)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 16), width=st.sampled_from([4, 8, 16]), size=st.integers(8, 40),
       optimizer=st.sampled_from(["sgd", "adam", "adamw", None]),
       precision=st.sampled_from(["32", "bf16"]), train=st.booleans())
def test_prediction_matches_a_measured_step_per_category(batch, width, size, optimizer,
                                                         precision, train):
    torch.manual_seed(0)
    model = SmallCNN(width)
    shape = [batch, 3, size, size]
    pred = memory_of(model, shape, optimizer=optimizer, precision=precision, train=train)
    meas = measure_memory(model, shape, optimizer=optimizer, precision=precision, train=train)
    assert abs(pred.peak_bytes - meas.peak_bytes) <= 0.05 * meas.peak_bytes
    for key in CATEGORIES:
        _close(pred, meas, key)
    assert pred.peak_at["phase"] == meas.peak_at["phase"]
    assert meas.measured["rss_growth_bytes"] >= 0


@pytest.mark.parametrize("optimizer,states", [("sgd", 1), ("adam", 2)])
def test_measured_step_is_the_second_one(optimizer, states):
    """A warm-up step runs first, so the optimizer's states exist (made by a real step) before
    the measured step starts; the weights end where two plain torch steps put them
    (reference: the same loss, backward and optimizer, written here in float64)."""
    dims = (16, 64, 8, 4)
    torch.manual_seed(0)
    model = chain(*dims)
    ref = chain(*dims).double()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(8, dims[0])
    meas = measure_memory(model, inputs=x, optimizer=optimizer)
    p = param_bytes(dims)
    steps = 6 * F32 if optimizer == "adam" else 0  # Adam's `step`: a float32 scalar each
    assert meas.start_bytes == p + states * p + steps + x.numel() * F32
    assert meas.by_category["optimizer"] == states * p + steps  # none made in the step
    assert meas.end_by_category["optimizer"] == states * p + steps
    assert [ph for ph, *_ in meas.timeline[:1]] == ["forward"]
    assert meas.measured["rss_start_bytes"] > 0 and meas.measured["rss_growth_bytes"] >= 0
    opt = (torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(ref.parameters(), lr=1e-3))
    after = []
    for _ in range(2):
        opt.zero_grad()
        out = ref(x.double())
        torch.nn.functional.cross_entropy(out, torch.zeros(8, dtype=torch.long)).backward()
        opt.step()
        after.append([q.detach().clone() for q in ref.parameters()])
    got = [q.detach().double() for q in model.parameters()]
    for a, b in zip(got, after[1]):  # two steps
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, after[0]))


def test_measure_keeps_tied_weights_tied_and_gives_the_model_back():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128)
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    ids = {"input_ids": torch.zeros(2, 16, dtype=torch.long)}
    pred = memory_of(model, inputs=ids, optimizer="adam")
    meas = measure_memory(model, inputs=ids, optimizer="adam")
    n = sum(p.numel() for p in model.parameters())  # tied: lm_head is wte
    assert pred.by_category["parameters"] >= F32 * n
    for key in CATEGORIES:
        _close(pred, meas, key)
    assert all(p.is_meta for p in model.parameters())  # swapped back
    assert model.lm_head.weight is model.transformer.wte.weight


def test_kv_cache_of_a_causal_lm_is_two_tensors_per_layer():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=1000, n_positions=512)
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    r = memory_of(model, inputs={"input_ids": torch.zeros(2, 16, dtype=torch.long)},
                  train=False, kv_context=300)
    assert r.kv_cache_bytes == 2 * 3 * 2 * 300 * 64 * F32  # K and V, layers, batch, tokens
    bf = memory_of(model, inputs={"input_ids": torch.zeros(2, 16, dtype=torch.long)},
                   train=False, kv_context=300, precision="bf16")
    assert bf.kv_cache_bytes == r.kv_cache_bytes // 2  # the projections run in bfloat16
    with pytest.raises(ConfigError, match="kv_context"):
        memory_of(chain(4, 4, 4, 4), [1, 4], kv_context=8)


def test_bf16_keeps_float32_weights_and_states_and_halves_saved_activations():
    with torch.device("meta"):
        model = chain(64, 512, 32, 10)
    full = memory_of(model, [32, 64], optimizer="adam")
    half = memory_of(model, [32, 64], optimizer="adam", precision="bf16")
    assert half.by_category["parameters"] == full.by_category["parameters"]
    assert half.start_bytes == full.start_bytes  # float32 master weights and Adam states
    # the ReLUs' outputs are bfloat16 under autocast
    assert half.saved_by_module["3"] == full.saved_by_module["3"] // 2


def test_huge_input_is_predicted_without_allocating():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
    r = memory_of(model, [1, 3, 100_000, 100_000], optimizer="sgd")
    assert r.peak_bytes > 100 * 2 ** 30  # hundreds of GB predicted
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grew_kb < 200 * 1024  # under 200 MB of it real


@pytest.mark.parametrize("kw,words", [({"optimizer": "lion"}, "memory.optimizer='lion'"),
                                      ({"precision": "8"}, "memory.precision='8'"),
                                      ({"precision": "bf16", "device": "meta"}, "meta")])
def test_bad_settings_are_one_line_naming_the_key(kw, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        memory_of(chain(4, 4, 4, 4), [1, 4], **kw)


def test_memory_figure_shows_the_timeline_the_peak_and_the_measured_line():
    model = chain(16, 64, 8, 4)
    pred = memory_of(model, [4, 16], optimizer="adam")
    meas = measure_memory(model, [4, 16], optimizer="adam")
    fig = memory_figure(pred, "chain", meas.peak_bytes)
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("op") and "MB" in ax.get_ylabel()
    timeline, peak = ax.lines[0], ax.lines[1]
    assert len(ax.lines) == 3  # the timeline, the peak marker, the measured peak
    assert len(timeline.get_xdata()) == len(pred.timeline)
    assert max(timeline.get_ydata()) == pytest.approx(pred.peak_bytes / 2 ** 20)
    assert peak.get_ydata()[0] == pytest.approx(pred.peak_bytes / 2 ** 20)
    assert ax.lines[2].get_ydata()[0] == pytest.approx(meas.peak_bytes / 2 ** 20)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("measured peak" in t for t in labels)


@pytest.mark.slow  # builds Llama-2-7B's modules on meta and runs a step on meta tensors
def test_llama_2_7b_training_step_on_meta_is_its_closed_form():
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008,
                                   num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    r = memory_of(model, inputs={"input_ids": torch.zeros(1, 128, dtype=torch.long)},
                  optimizer="adam", device="meta")
    n = 6_738_415_616  # Llama-2-7B's parameters
    tensors = len(list(model.parameters()))
    assert r.by_category["parameters"] >= F32 * n  # + the rotary buffers
    assert r.end_by_category["gradients"] == F32 * n
    assert r.end_by_category["optimizer"] == 2 * F32 * n + F32 * tensors
    assert r.peak_bytes >= 4 * F32 * n  # weights, gradients, two states


def test_pipeline_memory_outputs_and_guard_in_process(tmp_path):
    from dnnlab.opcount import count_ops
    from dnnlab.opcount.costs import memory_guard, memory_outputs
    from dnnlab.opcount.experiment import MemorySettings, OpcountSettings

    model = chain(16, 64, 8, 4)
    report = count_ops(model, [4, 16])
    builder = {"_target_": "torch.nn.Identity"}
    on = OpcountSettings(model={"builder": builder}, input_shape=[4, 16],
                         memory=MemorySettings(enabled=True, optimizer="sgd", measure=True))
    pred = memory_guard(model, report, on, [4, 16])
    out = memory_outputs(model, pred, tmp_path, name="chain", settings=on, input_shape=[4, 16])
    mem = out.results["memory"]
    assert mem["predicted"]["peak_bytes"] == pred.peak_bytes
    assert mem["measured"]["peak_bytes"] == pytest.approx(pred.peak_bytes, rel=0.05)
    assert (tmp_path / "memory.png").exists() and "predicted peak" in out.lines[0]
    assert [t.key for t in out.tables] == ["memory", "memory_modules"]
    off = OpcountSettings(model={"builder": builder}, input_shape=[4, 16])
    assert memory_guard(model, report, off, [4, 16]) is None
    assert memory_outputs(model, None, tmp_path, name="x", settings=off).results == {}
    tight = OpcountSettings(model={"builder": builder}, input_shape=[4, 16], measure=True,
                            memory=MemorySettings(measure_max_gb=1e-6))
    with pytest.raises(ConfigError, match="measure=true refused"):
        memory_guard(model, report, tight, [4, 16])
    with pytest.raises(ConfigError, match="memory.measure=true refused"):
        memory_guard(model, report, OpcountSettings(
            model={"builder": builder}, input_shape=[4, 16],
            memory=MemorySettings(measure=True, measure_max_gb=1e-6)), [4, 16])
    with pytest.raises(ConfigError, match="measure_max_gb"):
        MemorySettings(measure_max_gb=0)
