"""dnnlab's Conv1d/2d/3d (torch's classes with our backward) against torch's, swap_convs, and
the one-line shape errors naming the module path."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnlab.conv.function import weight_grad_mode
from dnnlab.core.errors import ShapeError
from dnnlab.nn import Conv1d, Conv2d, Conv3d, swap_convs

f64 = torch.float64
OURS = {1: Conv1d, 2: Conv2d, 3: Conv3d}
TORCH = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


def maxdiff(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


@st.composite
def conv_cases(draw):
    n = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.integers(1, 3))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 4)) for _ in range(n))
    dil = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = draw(st.sampled_from([1, 2, 3]))
    kind = draw(st.sampled_from(["int", "tuple", "valid", "same"] if stride == 1
                                else ["int", "tuple", "valid"]))
    pad = {"int": draw(st.integers(0, 3)),
           "tuple": tuple(draw(st.integers(0, 3)) for _ in range(n)),
           "valid": "valid", "same": "same"}[kind]
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    pads = ([0] * n if pad == "valid"
            else [d * (kk - 1) - d * (kk - 1) // 2 for d, kk in zip(dil, k)]
            if pad == "same" else [pad] * n if isinstance(pad, int) else list(pad))
    # the input must hold the dilated kernel after padding, and be longer than a reflect pad
    lo = [max(1, d * (kk - 1) + 1 - 2 * p, p + 1) for d, kk, p in zip(dil, k, pads)]
    size = tuple(draw(st.integers(m, m + (5 if n < 3 else 2))) for m in lo)
    return {"n": n, "cin": cin, "cout": cout, "kernel_size": k, "stride": stride, "padding": pad,
            "dilation": dil, "groups": groups, "bias": draw(st.booleans()), "padding_mode": mode,
            "batch": draw(st.integers(1, 3)), "size": size,
            "weight_grad": draw(st.sampled_from(["aten", "explicit"]))}


@settings(max_examples=80, deadline=None)
@given(conv_cases())
def test_conv_matches_torch(case):
    n, size, batch = case.pop("n"), case.pop("size"), case.pop("batch")
    cin, cout, wg = case.pop("cin"), case.pop("cout"), case.pop("weight_grad")
    torch.manual_seed(0)
    ref = TORCH[n](cin, cout, **case).double()
    ours = OURS[n](cin, cout, **case).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, cin, *size, dtype=f64, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    assert y.shape == y_ref.shape and maxdiff(y, y_ref) <= 1e-10
    assert type(y.grad_fn).__name__ == "ConvNdFunctionBackward"  # the backward is ours
    gy = torch.randn_like(y)
    g_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], gy)
    with weight_grad_mode(wg):
        g = torch.autograd.grad(y, [x, *ours.parameters()], gy)
    for a, b in zip(g, g_ref):
        assert a.shape == b.shape and maxdiff(a, b) <= 1e-10


@pytest.mark.parametrize("padding", [1, "same"])
def test_backward_is_ours(padding):
    conv = Conv2d(3, 5, 3, padding=padding)
    y = conv(torch.randn(2, 3, 8, 8))
    assert type(y.grad_fn).__name__ == "ConvNdFunctionBackward"
    assert isinstance(conv, torch.nn.Conv2d)
    with torch.no_grad():  # nothing to differentiate: plain conv, same numbers
        assert conv(torch.ones(1, 3, 8, 8)).grad_fn is None


def test_unbatched_and_input_without_grad():
    ref, ours = torch.nn.Conv1d(2, 3, 3).double(), Conv1d(2, 3, 3).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 10, dtype=f64)  # unbatched (C, L)
    assert maxdiff(ours(x), ref(x)) == 0
    ours(x).sum().backward()  # only weight and bias need gradients
    assert ours.weight.grad is not None and ours.bias.grad is not None


def test_saves_only_input_and_weight():
    conv = Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        conv(x)
    assert len(saved) == 2 and saved[0] is x and saved[1] is conv.weight


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated
def test_jit_trace_shows_torch_conv():
    graph = str(torch.jit.trace(Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)).graph)
    assert "aten::_convolution" in graph


def test_swap_convs_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    native = torchvision.models.resnet18(weights=None).double()
    swapped = copy.deepcopy(native)
    keys, params = list(swapped.state_dict()), [id(p) for p in swapped.parameters()]
    assert swap_convs(swapped) is swapped
    assert list(swapped.state_dict()) == keys and [id(p) for p in swapped.parameters()] == params
    convs = [m for m in swapped.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20 and all(type(m) is Conv2d for m in convs)
    assert swapped.layer1[0].conv1._dnnlab_name == "layer1.0.conv1"

    x = torch.randn(2, 3, 64, 64, dtype=f64)
    out_n, out_s = native(x), swapped(x)
    assert type(swapped.conv1(x).grad_fn).__name__ == "ConvNdFunctionBackward"
    assert maxdiff(out_n, out_s) <= 1e-10
    gy = torch.randn_like(out_n)
    names = [k for k, _ in native.named_parameters()]
    g_n = torch.autograd.grad(out_n, list(native.parameters()), gy)
    g_s = torch.autograd.grad(out_s, list(swapped.parameters()), gy)
    for k, a, b in zip(names, g_n, g_s):
        assert maxdiff(a, b) <= 1e-10 * max(1.0, a.abs().max().item()), k



# ----------------------------------------------------------------------------------------------
# bad sizes


def test_error_channels():
    conv = Conv2d(3, 64, 11)
    with pytest.raises(ShapeError,
                       match=r"Conv2d\(3, 64, k=11\): input has 4 channels, expected 3"):
        conv(torch.randn(1, 4, 32, 32))


def test_error_kernel_longer_than_padded_input():
    with pytest.raises(ShapeError, match=r"kernel 11 \(dilated 11\) > padded input 8"):
        Conv2d(3, 64, 11)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ShapeError, match=r"kernel 3 \(dilated 7\) > padded input 6"):
        Conv1d(2, 2, 3, dilation=3, padding=1)(torch.randn(1, 2, 4))
    with pytest.raises(ShapeError, match=r"kernel \(1, 5, 5\) \(dilated \(1, 5, 5\)\) > padded "
                                         r"input \(2, 4, 9\)"):
        Conv3d(1, 1, (1, 5, 5))(torch.randn(1, 1, 2, 4, 9))


def test_error_names_module_path():
    torchvision = pytest.importorskip("torchvision")
    model = swap_convs(torchvision.models.resnet18(weights=None))
    with pytest.raises(ShapeError, match=r"^conv1 Conv2d\(3, 64, k=7\): input has 4 channels"):
        model(torch.randn(1, 4, 32, 32))
    net = swap_convs(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 5)))
    with pytest.raises(ShapeError, match=r"^1 Conv2d\(8, 8, k=5\): kernel 5 \(dilated 5\) > "
                                         r"padded input 4"):
        net(torch.randn(1, 3, 6, 6))
