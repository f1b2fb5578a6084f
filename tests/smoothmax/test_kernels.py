"""SmoothMaxPool2d at beta = inf with shared ties (dnnlab.smoothmax.kernels._WindowMax and
_GlobalMax, the latter through its C++ kernel and through its pure-torch path): the same values
as max pooling and, bit for bit in float64 and float32, the same gradients as the
mask-and-average form the layer used before (copied below as the reference) and as an
independent per-window computation: g / (number of maxima) on each maximum, 0 elsewhere
(docs/math.md (1c), the limit of softmax(beta x)). Inputs with and without ties (ReLU zeros,
small integers), windows that tile the input or leave rows/columns out, and -inf, +inf, NaN."""
import math
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from dnnlab.core.timing import torch_threads
from dnnlab.smoothmax import native
from dnnlab.smoothmax.modules import SmoothMaxPool2d

INF = math.inf


def _up(t, kh, kw):
    b, c, ho, wo = t.shape
    return t[:, :, :, None, :, None].expand(b, c, ho, kh, wo, kw).reshape(b, c, ho * kh, wo * kw)


def previous_window(x, g, kh, kw):
    """The earlier _WindowSmoothMax at beta = inf, verbatim: (max, gradient)."""
    h, w = x.shape[2:]
    xc = x[:, :, :h // kh * kh, :w // kw * kw]
    m = F.max_pool2d(xc, (kh, kw))
    wgt = (xc == _up(m, kh, kw)).to(xc.dtype)
    count = F.avg_pool2d(wgt, (kh, kw)).mul_(kh * kw).clamp_min_(1.0)
    gq = torch.where(m > -math.inf, g / count, 0.0)
    gx = wgt.mul_(_up(gq, kh, kw))
    return m, F.pad(gx, (0, w - gx.shape[3], 0, h - gx.shape[2]))


def previous_global(x, g):
    """The earlier _GlobalMax, verbatim: (max, gradient)."""
    out = torch.amax(x, (2, 3), keepdim=True)
    wgt = ((x == out) & (out > -math.inf)).to(x.dtype)
    count = wgt.sum((2, 3), keepdim=True).clamp_min_(1.0)
    return out, wgt.mul_(g / count)


def per_window(x, g, kh, kw):
    """Independent: one window at a time, in Python loops."""
    gx = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(x.shape[2] // kh):
                for j in range(x.shape[3] // kw):
                    win = x[b, c, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw]
                    top = win.max()
                    if not top > -math.inf:  # NaN or all -inf: no maximum gets the gradient
                        continue
                    tied = win == top
                    gx[b, c, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw][tied] = (
                        g[b, c, i, j] / tied.sum().to(x.dtype))
    return gx


def inputs(kind, shape, dtype):
    gen = torch.Generator().manual_seed(hash((kind, shape)) % 2**31)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    if kind == "relu":  # ties among zeros, as after a ReLU
        x = x.relu()
    elif kind == "integers":  # ties at nonzero values too
        x = torch.randint(-2, 3, shape, generator=gen).to(dtype)
    elif kind == "special":  # an all -inf window, -inf beside finite, +inf ties, a NaN
        x[0, 0, :3, :3] = -INF
        x[0, 1, 0, 0] = -INF
        x[1, 0, 2:4, 2:4] = INF
        x[1, 1, 1, 1] = math.nan
    return x


def run(pool, x, g):
    x = x.clone().requires_grad_(True)
    y = pool(x)
    y.backward(g)
    return y.detach(), x.grad


def same_bits(a, b):
    """Equal entries (NaN where NaN) with the same sign bits, zeros included."""
    return (a.shape == b.shape and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())
            and torch.equal(a.signbit(), b.signbit()))


KINDS = ("relu", "integers", "normal", "special")


def has_compiler() -> bool:
    return shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture(params=["cpp", "torch"])
def path(request):
    """The global pooling's two paths: the C++ kernel (dnnlab.smoothmax.native) and the torch
    ops. Tests taking this fixture run through both and check that the one named was taken;
    the kernel's runs fail where a compiler exists but the kernel did not build, and are
    skipped where there is none (test_the_cpp_kernel_builds_here says so too)."""
    if request.param == "cpp" and native.kernels() is None:
        if not has_compiler():
            pytest.skip("no C++ compiler on PATH: the global pooling runs its torch ops")
        pytest.fail("the C++ kernel did not build (see the warning); `make setup` builds it")
    native.set_enabled(request.param == "cpp")
    yield request.param
    native.set_enabled(True)


def took(y, path):
    """y came from _GlobalMax through the path named (C++ kernel for float32/64 contiguous CPU)."""
    return y.grad_fn.native is (path == "cpp")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kernel,shape", [
    ((2, 2), (2, 3, 8, 8)), ((2, 2), (2, 3, 7, 9)), ((2, 3), (2, 3, 6, 9)), ((3, 3), (2, 2, 7, 8)),
    ((1, 1), (2, 2, 4, 5)), ((4, 1), (2, 2, 8, 3)), ((8, 8), (2, 2, 8, 8))])
def test_window_gradient_bit_for_bit(kernel, shape, kind, dtype):
    x = inputs(kind, shape, dtype)
    kh, kw = kernel
    if kind == "relu":
        x[0, 0, :kh, :kw] = 0.0  # at least one window of ReLU zeros
    g = torch.randn(shape[0], shape[1], shape[2] // kh, shape[3] // kw, dtype=dtype)
    y, gx = run(SmoothMaxPool2d(INF, kernel_size=kernel), x, g)
    m, gx_prev = previous_window(x, g, kh, kw)
    torch.testing.assert_close(y, m, rtol=0, atol=0, equal_nan=True)
    assert same_bits(gx, gx_prev)
    assert torch.equal(gx, per_window(x, g, kh, kw))
    if kind == "relu" and kh * kw > 1:  # the all-zero window shares its gradient
        assert torch.equal(gx[0, 0, :kh, :kw], (g[0, 0, 0, 0] / (kh * kw)).expand(kh, kw))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (3, 2, 5, 7), (2, 2, 1, 1)])
def test_global_gradient_bit_for_bit(shape, kind, dtype, path):
    x = inputs(kind, shape, dtype) if shape[2] > 3 or kind != "special" else torch.randn(shape)
    x = x.to(dtype)
    if kind == "relu":
        x[0, 0] = 0.0  # a dead channel: every entry ties
    g = torch.randn(shape[0], shape[1], 1, 1, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    assert took(SmoothMaxPool2d(INF)(xg), path)
    y, gx = run(SmoothMaxPool2d(INF), x, g)
    m, gx_prev = previous_global(x, g)
    torch.testing.assert_close(y, m, rtol=0, atol=0, equal_nan=True)
    assert same_bits(gx, gx_prev)
    assert torch.equal(gx, per_window(x, g, shape[2], shape[3]))


def test_half_precision_input_follows_the_float32_gradient():
    x = inputs("relu", (2, 3, 8, 8), torch.float32).to(torch.bfloat16)
    g = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    y, gx = run(SmoothMaxPool2d(INF, kernel_size=2), x, g)
    m, gx_prev = previous_window(x.float(), g.float(), 2, 2)
    assert y.dtype == gx.dtype == torch.bfloat16
    assert torch.equal(y.float(), m) and torch.equal(gx, gx_prev.to(torch.bfloat16))


@pytest.mark.parametrize("kernel", [None, (2, 2), (2, 3)])
def test_layouts_and_half_precision_follow_the_contiguous_float32_gradient(kernel, path):
    """channels_last and strided inputs give the contiguous input's gradient, bit for bit;
    float16/bfloat16 inputs the float32 gradient, rounded."""
    x = inputs("special", (2, 3, 8, 9), torch.float32)
    pool = SmoothMaxPool2d(INF, kernel_size=kernel)
    g = torch.randn(pool(x).shape)
    y, gx = run(pool, x, g)
    strided = torch.stack([x, x], 4).flatten(3)[..., ::2]  # x, every other column of a copy
    for xs in (x.contiguous(memory_format=torch.channels_last), strided):
        ys, gs = run(pool, xs, g)
        assert torch.equal(ys.nan_to_num(), y.nan_to_num()) and same_bits(gs, gx)
    for dtype in (torch.float16, torch.bfloat16):
        xh = inputs("relu", (2, 3, 8, 9), torch.float32).to(dtype)
        yh, gh = run(pool, xh, g.to(dtype))
        y32, g32 = run(pool, xh.float(), g.to(dtype).float())
        assert yh.dtype == gh.dtype == dtype
        assert torch.equal(yh.float(), y32) and torch.equal(gh, g32.to(dtype))


@pytest.mark.parametrize("kernel", [None, (2, 2), (3, 2)])
def test_backward_twice_and_through_the_incoming_gradient(kernel, path):
    """retain_graph: a second backward gives the same gradient (the global pooling hands its
    mask over to the first); create_graph: the gradient is differentiable in g, like the
    reference's (up to the order of the sums over a window's entries)."""
    x = inputs("integers", (2, 3, 6, 8), torch.float64).requires_grad_(True)
    y = SmoothMaxPool2d(INF, kernel_size=kernel)(x)
    g = torch.randn(y.shape, dtype=torch.float64, requires_grad=True)
    first, = torch.autograd.grad(y, x, g, retain_graph=True)
    second, = torch.autograd.grad(y, x, g, retain_graph=True)
    gx, = torch.autograd.grad(y, x, g, create_graph=True)
    assert same_bits(first, second) and same_bits(first, gx.detach())
    w = torch.randn(x.shape, dtype=torch.float64)
    gg, = torch.autograd.grad((gx * w).sum(), g)
    kh, kw = kernel or x.shape[2:]
    ref = (previous_window(x.detach(), g, kh, kw) if kernel else previous_global(x.detach(), g))[1]
    want, = torch.autograd.grad((ref * w).sum(), g)
    torch.testing.assert_close(gg, want)


def test_the_cpp_kernel_builds_here():
    """With a C++ compiler on the machine the kernel must build and load (the fast path of the
    global pooling); without one, the pure-torch path runs and this says so."""
    if not has_compiler():
        pytest.skip("no C++ compiler on PATH: the global pooling runs its pure-torch path")
    k = native.kernels()
    assert k is not None
    x = torch.tensor([[[[1.0, 3.0], [3.0, -1.0]]]])
    m, count = k.forward(x, True)
    assert m.item() == 3.0 and count.item() == 2.0
    gx = k.backward(x, m, count, torch.full((1, 1, 1, 1), -4.0))
    assert same_bits(gx, torch.tensor([[[[-0.0, -2.0], [-2.0, -0.0]]]]))


def test_a_kernel_that_cannot_be_built_warns_and_the_torch_path_runs(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DNNLAB_NATIVE_DIR", str(blocker / "sub"))
    native._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="C\\+\\+ max-pooling kernel is unavailable.*"
                                                "Not a directory"):
            assert native.kernels() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: later calls do not warn again
            x = torch.randn(2, 3, 4, 4, requires_grad=True)
            y = SmoothMaxPool2d(INF)(x)
            assert y.grad_fn.native is False
            y.sum().backward()
        assert torch.equal(x.grad, previous_global(x.detach(), torch.ones(2, 3, 1, 1))[1])
    finally:
        native._load.cache_clear()  # the next call loads the real build again


def test_switched_off_by_the_environment_or_set_enabled():
    code = ("import torch; from dnnlab.smoothmax import native, SmoothMaxPool2d; "
            "y = SmoothMaxPool2d(float('inf'))(torch.randn(1, 1, 2, 2, requires_grad=True)); "
            "print(native.kernels(), y.grad_fn.native)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DNNLAB_NATIVE": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "False"]
    native.set_enabled(False)
    try:
        assert native.kernels() is None
        y = SmoothMaxPool2d(INF)(torch.randn(1, 1, 2, 2, requires_grad=True))
        assert y.grad_fn.native is False
    finally:
        native.set_enabled(True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_global_cpp_kernel_over_several_threads(dtype, path, monkeypatch):
    """An input large enough that the kernel splits its planes over torch's threads (chunks of
    2^17 entries; the layer gives the kernel such inputs only when MAX_ENTRIES allows): the same
    values and gradients as the earlier form."""
    monkeypatch.setattr(native, "MAX_ENTRIES", 1 << 20)
    x = inputs("relu", (16, 64, 16, 16), dtype)
    x[3, 5] = 0.0
    x[9, 1, 2, 3] = math.nan
    g = torch.randn(16, 64, 1, 1, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    assert took(SmoothMaxPool2d(INF)(xg), path)
    with torch_threads(2):
        y, gx = run(SmoothMaxPool2d(INF), x, g)
    m, gx_prev = previous_global(x, g)
    torch.testing.assert_close(y, m, rtol=0, atol=0, equal_nan=True)
    assert same_bits(gx, gx_prev)


def test_large_inputs_take_the_torch_ops():
    x = torch.randn(2, 64, 32, 32, requires_grad=True)  # 131,072 entries: the largest taken
    assert SmoothMaxPool2d(INF)(x).grad_fn.native is (native.kernels() is not None)
    x = torch.randn(2, 64, 32, 33, requires_grad=True)
    assert SmoothMaxPool2d(INF)(x).grad_fn.native is False


def test_main_builds_or_says_why(capsys):
    assert native.main() == (0 if native.kernels() is not None else 1)
    assert native.NAME in capsys.readouterr().out
    native.set_enabled(False)
    try:
        assert native.main() == 1
        assert "switched off (DNNLAB_NATIVE=0)" in capsys.readouterr().out
    finally:
        native.set_enabled(True)


def test_a_failed_compile_is_reported_by_its_error_line():
    e = RuntimeError("Error building extension 'x': [1/2] c++ -O3 -c global_max.cpp -o x.o\n"
                     "FAILED: x.o\n"
                     "global_max.cpp:3:1: error: 'foo' does not name a type\n"
                     "ninja: build stopped: subcommand failed.")
    assert native.build_error(e) == "global_max.cpp:3:1: error: 'foo' does not name a type"
    assert native.build_error(OSError("[Errno 30] Read-only file system: '/x'")) == (
        "[Errno 30] Read-only file system: '/x'")
    assert native.build_error(RuntimeError()) == "RuntimeError"
