"""The dispatch-level net (dnnlab/opcount/dispatch.py): TorchScript, custom ops, aten kernels
and flex_attention counted where the function layer cannot see them, nothing twice; handler keys
for operators; the attention-backward convention; errors a user meets."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from dnnlab.core.errors import ShapeError
from dnnlab.opcount import MAC_FAMILIES, Count, count_ops, register_handler, unregister_handler
from dnnlab.opcount.counter import ForwardError


def _mac_total(r) -> int:
    return sum(r.totals()[f] for f in MAC_FAMILIES)


@pytest.fixture(scope="module")
def resnet18():
    return torchvision.models.resnet18().eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16", "convnext_tiny"])
def test_the_net_adds_nothing_to_eager_models(name):
    """Every product of an eager torchvision model is counted at the function level: the net
    stays quiet and the totals are those of the function layer alone (the zoo tests, slow,
    assert the same for timm, Hugging Face, recurrent, RAFT, detection, video models)."""
    from dnnlab.opcount import build_meta, torchvision_input_shape

    model = build_meta(lambda: torchvision.models.get_model(name))
    r = count_ops(model, torchvision_input_shape(name, model))
    assert not [row.op for row in r.layers if row.extra.get("level") == "dispatch"]
    assert r.total_macs() > 0


@pytest.mark.parametrize("how", ["script", "trace"])
def test_scripted_resnet18_counts_as_eager(resnet18, how):
    shape = [1, 3, 224, 224]
    eager = count_ops(resnet18, shape)
    jit = (torch.jit.script(resnet18) if how == "script"
           else torch.jit.trace(resnet18, torch.zeros(shape)))
    r = count_ops(jit, shape)
    assert r.mode == "meta"
    assert r.totals()["conv"] == eager.totals()["conv"] == 1_813_561_344  # conv counted as conv
    assert _mac_total(r) == _mac_total(eager)  # the fc's addmm under matmul
    assert r.totals()["linear"] + r.totals()["matmul"] == eager.totals()["linear"]
    assert r.totals()["bias"] == eager.totals()["bias"]
    # what neither layer counts is listed, never a silent zero
    assert {"aten.native_batch_norm", "aten.relu_", "aten.add_"} <= set(r.not_counted)
    assert all(row.extra.get("level") == "dispatch" for row in r.layers)


def test_a_scripted_model_is_left_as_it_was():
    """A ScriptModule keeps its parameters, buffers and train flag in C++: put back there."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    jit = torch.jit.script(net).train()
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in jit.state_dict().items()}
    for device in ("meta", "cpu"):
        count_ops(jit, [2, 3, 8, 8], device=device)
        assert jit.training and all(torch.equal(v, state[k]) for k, v in jit.state_dict().items())
        assert all(p.device.type == "cpu" for p in jit.parameters())
    jit.eval()
    assert torch.equal(jit(x), net.eval()(x))


def test_scripted_function_inside_an_eager_model_is_counted_once():
    @torch.jit.script
    def mm(x):
        return torch.mm(x, x)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return mm(self.fc(x))

    x = torch.randn(5, 5)
    r = count_ops(M(), inputs=(x,))
    with FlopCounterMode(display=False) as ref:
        M()(x)
    assert 2 * _mac_total(r) == ref.get_total_flops() == 500
    paths = {row.op: row.path for row in r.layers}
    assert paths["linear"] == "fc" and paths["mm"] == ""


@torch.library.custom_op("dnnlab_test::square_mm", mutates_args=())
def square_mm(x: torch.Tensor) -> torch.Tensor:
    return x @ x


@square_mm.register_fake
def _(x):
    return torch.empty_like(x)


class UsesCustom(nn.Module):
    def forward(self, x):
        return square_mm(x)


def _custom_count(args, kwargs, out) -> Count:
    n = args[0].shape[0]
    return Count("matmul", macs=n ** 3, mults=n ** 3)


@pytest.mark.parametrize("key", [square_mm, torch.ops.dnnlab_test.square_mm,
                                 torch.ops.dnnlab_test.square_mm.default,
                                 "dnnlab_test::square_mm"],
                         ids=["def", "packet", "overload", "str"])
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_custom_op_handlers(key, device):
    x = torch.randn(6, 6)
    bare = count_ops(UsesCustom(), inputs=(x,), device=device)
    assert bare.total_macs() == 0 and "square_mm.default" in bare.not_counted  # not silent
    r = count_ops(UsesCustom(), inputs=(x,), device=device, handlers={key: _custom_count})
    assert r.totals()["matmul"] == 216 and not r.not_counted
    register_handler(key, _custom_count)
    try:
        assert count_ops(UsesCustom(), inputs=(x,), device=device).totals()["matmul"] == 216
    finally:
        unregister_handler(key)


def test_aten_overload_handler_counts_a_direct_aten_call():
    class Direct(nn.Module):
        def forward(self, x):
            return torch.ops.aten.cumsum.default(x, 0)

    def cs(args, kwargs, out):
        return Count("elementwise", adds=out.numel(), macs=out.numel())
    x = torch.randn(3, 4)
    assert "cumsum.default" in count_ops(Direct(), inputs=(x,)).not_counted
    r = count_ops(Direct(), inputs=(x,), handlers={"aten::cumsum.default": cs})
    assert r.totals()["elementwise"] == 12


def test_direct_aten_mm_is_counted_by_the_net():
    class Direct(nn.Module):
        def forward(self, a, b):
            return torch.ops.aten.mm(a, b)
    r = count_ops(Direct(), inputs=(torch.randn(4, 5), torch.randn(5, 6)))
    assert r.totals()["matmul"] == 120 and not r.not_counted


@pytest.mark.parametrize("key,instead", [(torch.Tensor.__add__, "torch.add"),
                                         ("__mul__", "torch.mul"),
                                         (torch.Tensor.__matmul__, "torch.matmul")])
def test_a_key_never_seen_is_refused_naming_what_to_register(key, instead):
    with pytest.raises(ValueError, match=instead.replace(".", r"\.")):
        register_handler(key, _custom_count)
    with pytest.raises(ValueError, match="never reaches the counter"):
        count_ops(nn.Linear(2, 2), [1, 2], handlers={key: _custom_count})


def test_unknown_operator_string_is_refused():
    with pytest.raises(ValueError, match="no operator"):
        register_handler("dnnlab_test::no_such_op_zz", _custom_count)


class Flex(nn.Module):
    def forward(self, q, k, v, mask=None):
        return flex_attention(q, k, v, block_mask=mask)


def _flex_reference_flops(q, k, v) -> int:
    from torch._higher_order_ops.flex_attention import flex_attention as hop

    return flop_registry[hop](q, k, v)


def _block_pairs_reference(mask_mod, B, H, L, S, block) -> int:
    """Pairs of the blocks holding at least one kept (q, kv): from the mask_mod itself."""
    total = 0
    for b in range(B):
        for h in range(H):
            for i in range(0, L, block):
                for j in range(0, S, block):
                    qi = torch.arange(i, min(i + block, L))[:, None]
                    kj = torch.arange(j, min(j + block, S))[None, :]
                    keep = mask_mod(torch.tensor(b), torch.tensor(h), qi, kj)
                    if bool(keep.any()):
                        total += qi.numel() * kj.numel()
    return total


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_flex_attention_dense_equals_flop_counter_formula(device):
    q, k, v = torch.randn(2, 4, 200, 16), torch.randn(2, 4, 300, 16), torch.randn(2, 4, 300, 8)
    r = count_ops(Flex(), inputs=(q, k, v), device=device)
    assert r.mode == device
    assert 2 * r.totals()["attention"] == _flex_reference_flops(q, k, v)
    assert not r.has_causal()


@pytest.mark.parametrize("device", ["meta", "cpu"])
@pytest.mark.parametrize("L,S", [(256, 256), (300, 200)])
def test_flex_attention_block_mask_counts_the_computed_blocks(device, L, S):
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def sliding(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= 40

    for mod in (causal, sliding):
        mask = create_block_mask(mod, None, None, L, S, device="cpu")
        q, k, v = torch.randn(2, 3, L, 16), torch.randn(2, 3, S, 16), torch.randn(2, 3, S, 16)
        r = count_ops(Flex(), inputs=(q, k, v, mask), device=device)
        assert 2 * r.totals()["attention"] == _flex_reference_flops(q, k, v)  # dense
        pairs = _block_pairs_reference(mod, 1, 1, L, S, 128) * 2 * 3
        assert r.totals(causal=True)["attention"] == pairs * (16 + 16)


def test_attention_backward_convention():
    q = torch.empty(2, 4, 64, 32, device="meta", requires_grad=True)

    class A(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)
    math = count_ops(A(), inputs=(q, q, q))
    rec = count_ops(A(), inputs=(q, q, q), attention_backward="recompute")
    fwd = math.totals()["attention"]
    assert math.totals(backward=True)["attention"] == 2 * fwd  # fwd + bwd = 3 fwd
    assert rec.totals(backward=True)["attention"] == 5 * fwd // 2  # 3.5 fwd, as FlopCounterMode
    bwd_formula = flop_registry[torch.ops.aten._scaled_dot_product_efficient_attention_backward]
    assert 2 * rec.totals(backward=True)["attention"] == bwd_formula(q, q, q, q)
    with pytest.raises(ValueError, match="attention_backward"):
        count_ops(A(), inputs=(q, q, q), attention_backward="flash")


def test_forward_value_error_names_the_layer_and_what_it_raised():
    from tests.opcount.nets import ValueErrorNet

    with pytest.raises(ForwardError) as err:
        count_ops(ValueErrorNet(), [2, 4])
    text = str(err.value)
    assert "layer 'gate' (_Gate) raised ValueError: this gate takes one sample" in text
    assert "cannot take input" not in text


def test_three_d_input_to_a_conv2d_model_says_4d():
    with pytest.raises(ShapeError, match=r"layer 'conv1' \(Conv2d\): expects 4-d input .*"
                                         r"\[1, 3, 224\]") as err:
        count_ops(torchvision.models.resnet18(), [1, 3, 224])
    assert "channels" not in str(err.value)


@pytest.mark.parametrize("override,words,absent", [
    ("model=timm model.builder._target_=tests.opcount.nets.value_error_net input_shape=[2,4]",
     ["layer 'gate' (_Gate) raised ValueError", "one sample at a time"], "cannot take input"),
    ("model=resnet18 input_shape=[1,3,224]", ["conv1", "expects 4-d input", "[1, 3, 224]"],
     "1 channels"),
])
def test_pipeline_errors_are_one_line(pipeline, tmp_path, override, words, absent):
    out = tmp_path / "bad"
    proc = pipeline("opcount", *override.split(), "reconcile=false", f"hydra.run.dir={out}")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert absent not in lines[0] and "Traceback" not in proc.stderr
