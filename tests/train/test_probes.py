"""dnnlab.train.probes: the hand-written gradients of dnnlab's layers against autograd on live
data, and the pooling's gradient statistics against their definitions (docs/math.md (1c))."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dnnlab.nn import Conv1d, Conv2d, SmoothMaxPool2d
from dnnlab.train.model import SmoothMaxCNN
from dnnlab.train.probes import (
    Capture,
    compare,
    conv_check,
    pool_beta,
    pool_check,
    pool_stats,
    pooling_stats,
    probe_metrics,
)


def _batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (4,),
                                                                            generator=g)


@pytest.mark.parametrize("beta,ties", [(4.0, "shared"), (math.inf, "shared"),
                                       (math.inf, "first"), (0.5, "shared")])
def test_capture_and_compare_every_layer(beta, ties):
    torch.manual_seed(0)
    model = SmoothMaxCNN(1, 10, (4, 6, 6), beta=beta, normalized=True, ties=ties)
    x, y = _batch()
    cap = Capture(model)
    F.cross_entropy(model(x), y).backward()
    cap.close()
    rows = compare(cap)
    layers = {(r["layer"], r["param"]) for r in rows}
    assert {("features.0", "weight"), ("features.0", "bias"), ("features.0", "input"),
            ("features.4", "input"), ("features.7", "input")} <= layers
    assert {r["type"] for r in rows} == {"Conv2d", "SmoothMaxPool2d"}
    assert max(r["max_rel_err"] for r in rows) < 1e-4  # float32
    metrics = probe_metrics(rows)
    assert metrics == {"probe/max_abs_err": max(r["max_abs_err"] for r in rows),
                       "probe/max_rel_err": max(r["max_rel_err"] for r in rows)}
    assert probe_metrics([]) == {"probe/max_abs_err": 0.0, "probe/max_rel_err": 0.0}
    cap2 = Capture(model)
    model(x)  # no backward: no upstream gradient, nothing to compare
    cap2.close()
    assert compare(cap2) == []


@pytest.mark.parametrize("beta,ties", [(3.0, "shared"), (math.inf, "shared"), (math.inf, "first")])
def test_pool_probe_with_padding_dilation_ceil_mode(beta, ties):
    """The probe's reference pools the windows the layer pools (padded with -inf, dilated,
    ceil_mode): a padded, dilated pooling agrees with it to rounding, and so do its stats."""
    torch.manual_seed(0)
    pool = SmoothMaxPool2d(beta, 3, stride=2, padding=1, dilation=2, ceil_mode=True, ties=ties)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    g = torch.randn_like(pool(x))
    (abs_err, rel_err), = pool_check(pool, x, g).values()
    assert rel_err < 1e-12, (abs_err, rel_err)
    s = pool_stats(pool, x)
    assert 0 <= s["entropy"] <= s["entropy_max"] == math.log(9) and 0 < s["argmax_mass"] <= 1


def test_float64_checks_agree_to_rounding():
    torch.manual_seed(0)
    conv = Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    g = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    errs = conv_check(conv, x, g)
    assert set(errs) == {"input", "weight", "bias"} and max(e[1] for e in errs.values()) < 1e-12
    conv1 = Conv1d(1, 2, 3, bias=False).double()
    errs = conv_check(conv1, torch.randn(1, 1, 7, dtype=torch.float64),
                      torch.randn(1, 2, 5, dtype=torch.float64))
    assert set(errs) == {"input", "weight"} and errs["input"][1] < 1e-12
    for pool in (SmoothMaxPool2d(2.0, kernel_size=2, normalized=True),
                 SmoothMaxPool2d(torch.tensor([1.0, math.inf], dtype=torch.float64)),
                 SmoothMaxPool2d(3.0, learnable=True)):
        pool = pool.double()
        xx = torch.randn(2, 2, 4, 4, dtype=torch.float64)
        out = pool(xx)
        (a, r), = pool_check(pool, xx, torch.randn_like(out)).values()
        assert r < 1e-12, pool


def test_pool_stats_follow_softmax():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    tiny = pool_stats(SmoothMaxPool2d(1e-9, kernel_size=2), x)  # softmax -> uniform
    assert tiny["entropy"] == pytest.approx(math.log(4)) and tiny["entropy_max"] == math.log(4)
    assert tiny["argmax_mass"] == pytest.approx(0.25)
    inf = pool_stats(SmoothMaxPool2d(math.inf), x)  # distinct values: the one-hot
    assert inf["entropy"] == 0 and inf["argmax_mass"] == 1 and inf["entropy_max"] == math.log(16)
    ties = torch.zeros(1, 1, 2, 2)
    shared = pool_stats(SmoothMaxPool2d(math.inf, kernel_size=2), ties)
    first = pool_stats(SmoothMaxPool2d(math.inf, kernel_size=2, ties="first"), ties)
    assert shared["entropy"] == pytest.approx(math.log(4)) and first["entropy"] == 0
    beta = 2.0
    w = x[:, :, :2, :2].flatten(-2)  # the first window of each channel
    p = torch.softmax(beta * w, -1)
    per = pool_stats(SmoothMaxPool2d(beta, kernel_size=2), x[:, :, :2, :2])
    assert per["argmax_mass"] == pytest.approx(p.amax(-1).mean().item())
    chan = pool_stats(SmoothMaxPool2d(torch.tensor([1.0, 2.0, 3.0])), x)
    assert 0 < chan["entropy"] < math.log(16)


@pytest.mark.parametrize("beta", [1e-3, 0.5, 4.0, 1e3, [1.0, 2.0, 30.0]])
def test_pool_stats_equal_a_float64_softmax_reference(beta):
    """Entropy and argmax mass of every 2x2 window against torch.softmax in float64 (p log p
    where p > 0), with a window holding -inf entries and weights that underflow at beta 1e3."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 6, 6, generator=g)
    x[0, 0, :2, :2] = torch.tensor([[0.5, -math.inf], [-math.inf, 0.25]])
    b = torch.tensor(beta, dtype=torch.float64).view(1, -1, 1, 1, 1) if isinstance(beta, list) \
        else beta
    w = x.double().unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)  # (B, C, 3, 3, 4)
    p = torch.softmax(b * w, -1)
    ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
    pool = SmoothMaxPool2d(torch.tensor(beta) if isinstance(beta, list) else beta, kernel_size=2)
    got = pool_stats(pool, x)
    assert got["entropy"] == pytest.approx(ent.mean().item(), rel=1e-12, abs=1e-15)
    assert got["argmax_mass"] == pytest.approx(p.amax(-1).mean().item(), rel=1e-12)


def test_pooling_stats_and_pool_beta():
    torch.manual_seed(0)
    model = SmoothMaxCNN(1, 10, (4, 6, 6), beta=4.0, normalized=True)
    stats = pooling_stats(model, _batch()[0])
    assert not model.training
    assert set(stats) >= {"pool/features.4/entropy", "pool/features.7/entropy_rel",
                          "pool/features.4/beta", "pool/entropy_rel", "pool/argmax_mass"}
    assert stats["pool/features.4/beta"] == 4.0 and 0 < stats["pool/entropy_rel"] < 1
    assert pool_beta(model) == 4.0
    assert pool_beta(SmoothMaxCNN(beta="inf")) == "inf"
    assert pool_beta(SmoothMaxCNN(beta=2.0, learnable=True)) == "learnable"
    assert pool_beta(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None
    assert pooling_stats(torch.nn.Sequential(torch.nn.Flatten()), _batch()[0]) == {}
    learn = pooling_stats(SmoothMaxCNN(beta=2.0, learnable=True), _batch()[0])
    assert learn["pool/features.4/beta"] == pytest.approx(2.0)


def test_compare_is_each_layer_alone_also_with_a_tied_weight():
    """compare differentiates every layer in one backward pass per side; a weight two layers
    share would then get both layers' gradient, so those layers are checked one by one: each
    row is what conv_check / pool_check give for that layer alone."""
    torch.manual_seed(0)
    a, b = Conv2d(2, 2, 3, padding=1), Conv2d(2, 2, 3, padding=1)
    b.weight, b.bias = a.weight, a.bias  # tied (the bias's errors are not 0: a sum shows)
    model = torch.nn.Sequential(a, torch.nn.ReLU(), b, SmoothMaxPool2d(2.0, kernel_size=2))
    for tie in (True, False):
        if not tie:
            b.weight, b.bias = (torch.nn.Parameter(p.detach() * 2) for p in (a.weight, a.bias))
        x = torch.randn(3, 2, 6, 6)
        cap = Capture(model)
        model(x).square().sum().backward()
        cap.close()
        got = {(r["layer"], r["param"]): (r["max_abs_err"], r["max_rel_err"])
               for r in compare(cap)}
        alone = {}
        for name, e in cap.items.items():
            m, xx, g = e["module"], e["x"][:8], e["g"][:8]
            res = pool_check(m, xx, g) if name == "3" else conv_check(m, xx, g)
            alone |= {(name, p): v for p, v in res.items()}
        assert got == alone and ("2", "bias") in got


def _step(model, x, y, *, opt=None, clip=None, parts=1):
    """One training step under a Capture, as the loop makes it: the backward of each part (the
    micro-batches of trainer.accumulate), then the gradient clipped in place and the optimizer
    stepped, before compare."""
    cap = Capture(model)
    try:
        for xs, ys in zip(x.chunk(parts), y.chunk(parts)):
            F.cross_entropy(model(xs), ys, reduction="sum").div(len(y)).backward()
    finally:
        cap.close()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if opt is not None:
        opt.step()
    return compare(cap)


def _digits_batch(n=32):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_a_probe_checks_the_gradients_the_step_used(monkeypatch):
    """"Ours" is what the step's backward computed: layers whose backward is off by 1% in the
    training step only (our conv's input and weight formulas scaled while it runs, a backward
    hook scaling the pooling's input gradient) and right when the probe would recompute them
    show a relative error of 1e-2 in exactly those rows; a probe that recomputed our side
    would see 1e-7."""
    import dnnlab.conv.function as fn

    torch.manual_seed(0)
    model = SmoothMaxCNN(1, 10, (4, 6, 6), beta=4.0, normalized=True)
    x, y = _digits_batch()
    conv2, conv5 = model.features[2], model.features[5]
    faulty = set()

    def off(f, part):
        def g(*args, **kw):
            out = f(*args, **kw)
            return out * 1.01 if part in faulty else out
        return g

    monkeypatch.setattr(fn, "conv_input_grad", off(fn.conv_input_grad, "input"))
    monkeypatch.setattr(fn, "conv_weight_grad", off(fn.conv_weight_grad, "weight"))
    pool_hook = model.features[4].register_full_backward_hook(lambda m, gi, go: (gi[0] * 1.01,))
    cap = Capture(model)  # after the pooling's fault: it reads what the step went on with
    # only conv2's input formula and conv5's weight formula run faulty, inside their backward
    conv2.register_full_backward_pre_hook(lambda m, go: faulty.add("input"))
    conv5.register_full_backward_pre_hook(lambda m, go: faulty.add("weight"))
    conv2.register_full_backward_hook(lambda m, gi, go: faulty.discard("input"))
    conv5.register_full_backward_hook(lambda m, gi, go: faulty.discard("weight"))
    F.cross_entropy(model(x), y).backward()
    cap.close()
    pool_hook.remove()
    assert not faulty
    errs = {(r["layer"], r["param"]): r["max_rel_err"] for r in compare(cap)}
    wrong = {("features.2", "input"), ("features.4", "input"), ("features.5", "weight")}
    for key, rel in errs.items():
        if key in wrong:
            assert 0.009 < rel < 0.011, (key, rel)
        else:
            assert rel < 1e-5, (key, rel)


def test_probe_rows_hold_after_the_step_clips_and_steps_in_place():
    """compare runs after the optimizer step and the clipping, which change the weights and the
    gradients in place: the probe compares with the weights and gradients of the step
    (relative errors at float32 rounding), on accumulated micro-batches too."""
    for parts, clip in ((1, None), (1, 1e-3), (2, 1e-3)):
        torch.manual_seed(0)
        model = SmoothMaxCNN(1, 10, (4, 6, 6), beta=4.0, normalized=True)
        opt = torch.optim.SGD(model.parameters(), lr=10.0)
        x, y = _digits_batch()
        rows = _step(model, x, y, opt=opt, clip=clip, parts=parts)
        assert len(rows) == 11 and max(r["max_rel_err"] for r in rows) < 1e-5, (parts, clip)


def test_a_probe_changes_no_number_of_the_step():
    """The views and hooks of a Capture leave the step's gradients bit for bit as they are."""
    x, y = _digits_batch()
    grads = []
    for probe in (False, True):
        torch.manual_seed(0)
        model = SmoothMaxCNN(1, 10, (4, 6, 6), beta=4.0, normalized=True)
        cap = Capture(model) if probe else None
        F.cross_entropy(model(x), y).backward()
        if cap:
            cap.close()
            assert compare(cap)
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_probe_rows_of_odd_layers_hold_at_rounding():
    """Layers whose gradients are checked live in less common ways, or recomputed on both sides
    (reflect padding: the Function sees a padded input; a learnable temperature, stepped before
    compare; a bf16 step, on float64 copies): a conv called twice in a step (its last call's
    backward), a weight also used outside its conv (a tied decoder: the conv's own share), a
    frozen weight or bias (no row for it), "valid" padding, an unbatched input of 12 channels.
    Every row at rounding."""
    torch.manual_seed(0)
    twice = Conv2d(2, 2, 3, padding=1)
    model = torch.nn.Sequential(Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), twice,
                                torch.nn.ReLU(), twice,
                                Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
                                SmoothMaxPool2d(2.0, kernel_size=2, learnable=True),
                                torch.nn.Flatten(), torch.nn.Linear(48, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = _digits_batch()
    rows = _step(model, x, y, opt=opt)
    assert {(r["layer"], r["param"]) for r in rows} == {
        (layer, p) for layer in ("0", "2", "5") for p in ("input", "weight", "bias")} | {
        ("6", "input")}
    assert max(r["max_rel_err"] for r in rows) < 1e-5

    class Tied(torch.nn.Module):  # an autoencoder decoding with its encoder's weight
        def __init__(self):
            super().__init__()
            self.enc = Conv2d(1, 4, 3, padding="valid")
            self.frozen = Conv2d(4, 4, 1)
            self.frozen.weight.requires_grad_(False)

        def forward(self, x):
            h = self.frozen(torch.relu(self.enc(x)))
            return F.conv_transpose2d(h, self.enc.weight).flatten(1)[:, :10]

    rows = _step(Tied(), x, y)
    assert {(r["layer"], r["param"]) for r in rows} == {
        ("enc", "input"), ("enc", "weight"), ("enc", "bias"), ("frozen", "input"),
        ("frozen", "bias")}
    assert max(r["max_rel_err"] for r in rows) < 1e-5
    conv = Conv2d(12, 3, 3)
    cap = Capture(conv)
    conv(torch.randn(12, 6, 6)).square().sum().backward()  # unbatched: (C, H, W)
    cap.close()
    rows = compare(cap)
    assert len(rows) == 3 and max(r["max_rel_err"] for r in rows) < 1e-5
    torch.manual_seed(0)
    model = SmoothMaxCNN(1, 10, (4, 6, 6), beta=4.0, normalized=True)
    cap = Capture(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    F.cross_entropy(out.float(), y).backward()
    cap.close()
    rows = compare(cap)
    assert len(rows) == 11 and max(r["max_rel_err"] for r in rows) < 1e-12  # float64 copies
