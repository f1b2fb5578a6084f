"""oneDNN's LSTM workspace: what `aten.mkldnn_rnn_layer` allocates on the CPU and keeps for
backward, which its fake/meta kernel gives as an empty tensor (docs/math.md (4)).

PyTorch runs a CPU nn.LSTM (float32 or bfloat16, no projection) one layer and direction at a
time through oneDNN (aten/src/ATen/native/mkldnn/RNN.cpp, `mkldnn_rnn_layer`): with grad mode
on it asks the forward-training primitive for its workspace size and returns a uint8 tensor of
that many bytes, saved for `mkldnn_rnn_layer_backward`. oneDNN lays the workspace out in
src/cpu/rnn/rnn_utils.hpp (`init_conf`: leading dimensions; `set_workspace_sizes`: the seven
regions) and rnn_utils.cpp (`set_offsets`: each region starts on a 4 KiB page). GRU and plain
RNN layers do not take this path (their meta kernels already give the CPU's sizes).
"""
from __future__ import annotations

import torch

PAGE = 4096  # set_offsets: every region starts on a page
ACC_BYTES = 4  # the gradient regions are float32 (gemm_acc_t) whatever the data type
LSTM_MODE = 2  # ideep::rnn_kind::LSTM, the `mode` argument of mkldnn_rnn_layer
GATES = 4  # i, f, g, o


def good_ld(dim: int, itemsize: int) -> int:
    """oneDNN's leading dimension (rnn_utils::get_good_ld): `dim` rounded up to 64 bytes, plus
    64 bytes more when the result is a multiple of 256 elements (no 4K aliasing)."""
    per_line = 64 // itemsize
    ld = -(-dim // per_line) * per_line
    return ld + per_line if ld % 256 == 0 else ld


def _page(n: int) -> int:
    return -(-n // PAGE) * PAGE


def lstm_workspace_bytes(seq: int, batch: int, input_size: int, hidden_size: int,
                         itemsize: int = 4, c_itemsize: int | None = None) -> int:
    """Bytes of the workspace one `mkldnn_rnn_layer` call (one layer, one direction) returns
    in training, docs/math.md (4): with T = seq, B = batch, I = input_size, H = hidden_size,
    s = the data type's bytes (`itemsize`), s_c = the cell state's (`c_itemsize`, default s),
    W = max(I, H), each region rounded up to a 4 KiB page:
    gates T B ld(4H, s) s; h T B ld(H, s) s; states 2 (T+1) B ld(W, s) s;
    c states 2 (T+1) B H s_c; two diff-state regions 2 (T+1) B ld(W, 4) 4 each;
    diff c states 2 (T+1) B H 4."""
    c_itemsize = itemsize if c_itemsize is None else c_itemsize
    states = 2 * (seq + 1) * batch  # (layers + 1) x (steps + 1) x batch rows, one layer
    wide = max(input_size, hidden_size)
    regions = [seq * batch * good_ld(GATES * hidden_size, itemsize) * itemsize,  # (T, B, 4H)
               seq * batch * good_ld(hidden_size, itemsize) * itemsize,  # (T, B, H)
               states * good_ld(wide, itemsize) * itemsize,  # (2, T+1, B, W)
               states * hidden_size * c_itemsize,  # (2, T+1, B, H)
               states * good_ld(wide, ACC_BYTES) * ACC_BYTES,  # diff states layer
               states * good_ld(wide, ACC_BYTES) * ACC_BYTES,  # diff states iter
               states * hidden_size * ACC_BYTES]  # diff c states
    return sum(_page(r) for r in regions)


def mkldnn_rnn_workspace(args: tuple) -> int | None:
    """The workspace bytes `aten.mkldnn_rnn_layer(*args)` allocates on the CPU with grad mode
    on; None where (4) is not known to hold (a mode other than LSTM)."""
    inp, cx, mode, hidden_size = args[0], args[6], args[9], args[10]
    if int(mode) != LSTM_MODE:
        return None
    seq, batch, input_size = inp.shape  # (T, B, I): PyTorch passes it time-major
    return lstm_workspace_bytes(int(seq), int(batch), int(input_size), int(hidden_size),
                                inp.element_size(), cx.element_size())


def lstm_backward_scratch_bytes(seq: int, batch: int, input_size: int, hidden_size: int,
                                grad_output_copy: bool = False) -> int:
    """Bytes one float32 CPU `mkldnn_rnn_layer_backward` call (one LSTM layer, one direction)
    allocates and frees inside itself, none of it a tensor, docs/math.md (4b): oneDNN's
    scratchpad for the gates' gradients, every step's at once (merged GEMMs), T B ld(4H, 4) 4;
    the weights reordered into oneDNN's layout and their float32 gradients made in that layout
    before they are copied out (ideep's lstm_backward), 4H (I + H) (4 + 4); and, for a
    `grad_output` that is not contiguous (batch_first), RNN.cpp's contiguous copy of it,
    T B H 4."""
    gates = seq * batch * good_ld(GATES * hidden_size, ACC_BYTES) * ACC_BYTES
    weights = GATES * hidden_size * (input_size + hidden_size) * (4 + ACC_BYTES)
    return gates + weights + (seq * batch * hidden_size * 4 if grad_output_copy else 0)


def kernel_scratch(func, args: tuple) -> int | None:
    """Bytes of scratch that is no tensor inside `func(*args)` on the CPU, where dnnlab knows
    it (oneDNN's float32 LSTM backward, (4b)), for fake arguments; 0 for other ops and real
    tensors (their scratch is in the RSS, not modelled); None for a bfloat16 LSTM backward,
    whose scratch (4b) does not give (measured: a quarter of the gates' term, other weight
    copies)."""
    if func is not torch.ops.aten.mkldnn_rnn_layer_backward.default or not _is_fake(args[0]):
        return 0
    inp, grad_output, mode, hidden_size = args[0], args[10], args[14], args[15]
    if int(mode) != LSTM_MODE:
        return 0
    if inp.dtype != torch.float32:
        return None
    seq, batch, input_size = inp.shape  # (T, B, I)
    copy = grad_output is not None and not grad_output.is_contiguous()
    return lstm_backward_scratch_bytes(int(seq), int(batch), int(input_size), int(hidden_size),
                                       copy)


def size_fake_workspace(func, args: tuple, res):
    """`res` of `func(*args)` with the fake outputs of oneDNN's LSTM made the CPU's size, so
    that each lives exactly as long as autograd keeps it: `mkldnn_rnn_layer`'s empty workspace
    becomes a fake uint8 tensor of (4) bytes (made under the FakeTensorMode below the caller),
    and `mkldnn_rnn_layer_backward`'s second bias gradient, which the fake kernel returns as
    the first one again, its own storage (the CPU kernel returns a clone, RNN.cpp). Returns
    (res, unsized): `unsized` is the op's name when its workspace stays unknown, else None.
    Real tensors pass through untouched."""
    if func is torch.ops.aten.mkldnn_rnn_layer_backward.default:
        db, db2 = res[3], res[4]
        if (_is_fake(db2) and db2.untyped_storage()._cdata == db.untyped_storage()._cdata):
            return (*res[:4], torch.empty_like(db2), *res[5:]), None
        return res, None
    if func is not torch.ops.aten.mkldnn_rnn_layer.default or not torch.is_grad_enabled():
        return res, None
    ws = res[3]
    if not _is_fake(ws) or ws.numel() > 0:
        return res, None
    n = mkldnn_rnn_workspace(args)
    if n is None:
        return res, "mkldnn_rnn_layer"
    return (*res[:3], torch.empty(n, dtype=torch.uint8, device=ws.device)), None


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or (isinstance(t, torch.Tensor) and t.is_meta)
