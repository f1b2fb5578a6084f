"""Closed-form operation counts of convolution and linear layers (docs/math.md (2)).

docs/math.md (2): a convolution output is one dot product of a C_in/groups x k^2 patch with the
filter: C_in k^2 multiplications and, counting the bias add, C_in k^2 additions (C_in k^2 - 1
to sum the products, +1 for the bias). There are C_out H_out W_out outputs per image. A linear
layer is the special case k = 1, H_out = W_out = 1: in_features x out_features.

MACs (multiply-accumulates, fvcore's unit) equal the multiplications.
Additions: `mults - outputs` without the bias add, `mults` with it (the convention of (2)).
"""
from __future__ import annotations

from collections.abc import Sequence
from math import floor, prod


def conv_out_size(n_in: int, k: int, stride: int, pad: int, dilation: int) -> int:
    """Output length of a convolution along one axis: floor((n + 2p - d(k-1) - 1)/s) + 1."""
    return floor((n_in + 2 * pad - dilation * (k - 1) - 1) / stride) + 1


def conv_transpose_out_size(n_in: int, k: int, stride: int, pad: int, dilation: int,
                            output_padding: int) -> int:
    """Output length of a transposed convolution: (n-1)s - 2p + d(k-1) + output_padding + 1."""
    return (n_in - 1) * stride - 2 * pad + dilation * (k - 1) + output_padding + 1


def conv_counts(out_shape: Sequence[int], c_in: int, kernel: Sequence[int], groups: int,
                bias: bool) -> tuple[int, int, int]:
    """(mults, adds, macs) of a convolution with output shape (N, C_out, *spatial).

    docs/math.md (2): C_in k^2 mults per output (C_in/groups with groups), times
    N C_out H_out W_out outputs.
    """
    outputs = prod(out_shape)  # N * C_out * H_out * W_out
    per_output = (c_in // groups) * prod(kernel)  # C_in k^2
    mults = outputs * per_output
    adds = mults if bias else mults - outputs  # sum of products (+1 bias add per output)
    return mults, adds, mults


def conv_transpose_counts(in_shape: Sequence[int], c_out: int, kernel: Sequence[int],
                          groups: int, out_shape: Sequence[int], bias: bool
                          ) -> tuple[int, int, int]:
    """(mults, adds, macs) of a transposed convolution (input shape (N, C_in, *spatial)).

    Every input element is multiplied by a C_out/groups x k^d slice of the filter (the adjoint of
    docs/math.md (2)); these products are scattered into the output and summed there.
    """
    mults = prod(in_shape) * (c_out // groups) * prod(kernel)
    outputs = prod(out_shape)
    adds = mults - outputs + (outputs if bias else 0)  # approximate: each output sums its products
    return mults, max(adds, 0), mults


def linear_counts(in_shape: Sequence[int], out_features: int, bias: bool) -> tuple[int, int, int]:
    """(mults, adds, macs) of y = x W^T + b on x of shape (..., in_features).

    docs/math.md (2): linear = conv with k = 1, H_out = W_out = 1: in x out per row of x.
    """
    rows = prod(in_shape[:-1])
    mults = rows * in_shape[-1] * out_features
    outputs = rows * out_features
    adds = mults if bias else mults - outputs
    return mults, adds, mults


def matmul_counts(a_shape: Sequence[int], b_shape: Sequence[int], out_shape: Sequence[int]
                  ) -> tuple[int, int, int]:
    """(mults, adds, macs) of a (batched) matrix product: each output sums K products."""
    if len(a_shape) == 1:
        k = a_shape[0]
    else:
        k = a_shape[-1]
    outputs = prod(out_shape) if len(out_shape) else 1
    mults = outputs * k
    return mults, mults - outputs, mults


def attention_counts(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]
                     ) -> tuple[int, int, int]:
    """(mults, adds, macs) of softmax(q k^T / sqrt(d)) v: two batched products.

    q (..., L, E), k (..., S, E), v (..., S, Ev): q k^T costs L S E, (attn) v costs L S Ev.
    """
    *batch_q, L, E = q_shape
    *_, S, Ev = v_shape
    b = prod(batch_q)
    macs = b * L * S * (E + Ev)
    outputs = b * L * S + b * L * Ev
    return macs, macs - outputs, macs


def _einsum_terms(equation: str, ndims: Sequence[int]) -> tuple[list[str], str]:
    """The input terms and the output term of an einsum equation, '...' spelled out as
    letters that the equation does not use (as many as each operand's broadcast dims)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    free = [c for c in "".join(map(chr, range(0x100, 0x140)))]  # letters no equation uses
    ell_n = max((n - len(t.replace("...", "")) for t, n in zip(terms, ndims) if "..." in t),
                default=0)
    ell = "".join(free[:ell_n])
    terms = [t.replace("...", ell[ell_n - (n - len(t.replace("...", ""))):])
             if "..." in t else t for t, n in zip(terms, ndims)]
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit output: the letters seen once, in alphabetical order, after '...'
        seen = "".join(terms)
        out = ell + "".join(sorted(c for c in set(seen) if seen.count(c) == 1 and c not in ell))
    return terms, out


def einsum_contractions(equation: str, shapes: Sequence[Sequence[int]],
                        path: Sequence[tuple[int, int]] | None = None,
                        grads: Sequence[bool] | None = None) -> list[tuple[int, int, int]]:
    """(MACs, outputs, backward MACs) of each pairwise product torch runs for
    `torch.einsum(equation, *ops)` (`grads`: which operands require grad; the backward of a
    product is one product of the same size per operand that needs a gradient).

    torch contracts the operands two at a time, along `path` (pairs of positions in the list of
    remaining operands, the result appended at the end: opt_einsum's convention) or left to
    right. Before that, an index that appears in one operand only and not in the output is
    summed out of it (adds, no products). A pair is then a batched matrix product (bmm) whose
    cost is the product of the sizes of the indices both operands keep (batch), of each one's
    own kept indices, and of the indices summed there (those that no later operand and not the
    output use): every combination is one multiply-accumulate. A pair with no index to sum is
    an elementwise (broadcast) product, not a MAC (torch runs `mul`). One operand: no product
    (a permutation, a diagonal or a sum).
    """
    terms, out = _einsum_terms(equation, [len(s) for s in shapes])
    size: dict = {}
    ops = []
    for term, shape in zip(terms, shapes):
        dims = {}
        for ch, n in zip(term, shape):
            dims[ch] = int(n)  # a repeated letter is a diagonal: one index
            if int(n) != 1:
                size[ch] = int(n)
        ops.append({ch for ch, n in dims.items() if n != 1})  # size-1 dims broadcast
    keep_out = set(out)
    count: dict = {}
    for o in ops:
        for ch in o:
            count[ch] = count.get(ch, 0) + 1
    ops = [{ch for ch in o if count[ch] > 1 or ch in keep_out} for o in ops]  # summed alone
    if len(ops) < 2:
        return []
    left_to_right = path is None  # the result stays first; on a path it goes last
    if path is None:
        path = [(0, 1)] * (len(ops) - 1)
    rg = list(grads) if grads is not None else [True] * len(ops)
    result = []
    for i, j in path:
        a, b = ops[i], ops[j]
        ga, gb = rg[i], rg[j]
        rg = [g for k, g in enumerate(rg) if k not in (i, j)]
        rg = [ga or gb] + rg if left_to_right else rg + [ga or gb]
        rest = [o for k, o in enumerate(ops) if k not in (i, j)]
        later = set().union(*rest) if rest else set()
        summed = {ch for ch in a | b if ch not in keep_out and ch not in later}
        both = a & b
        if summed:
            # one-sided summed indices are summed out first; the bmm sums the shared ones
            a = {ch for ch in a if ch not in summed or ch in both}
            b = {ch for ch in b if ch not in summed or ch in both}
            kept = (a | b) - summed
            macs = prod(size[ch] for ch in a | b)
            result.append((macs, prod(size[ch] for ch in kept), macs * (int(ga) + int(gb))))
        else:
            kept = a | b
        ops = [kept - summed] + rest if left_to_right else rest + [kept - summed]
    return result


def matrix_chain_macs(dims: Sequence[int]) -> int:
    """MACs of the cheapest order of A_1 ... A_n, A_i of shape dims[i-1] x dims[i]
    (what torch.linalg.multi_dot runs: it picks that order)."""
    n = len(dims) - 1
    best = [[0] * n for _ in range(n)]
    for span in range(1, n):
        for i in range(n - span):
            j = i + span
            best[i][j] = min(best[i][k] + best[k + 1][j] + dims[i] * dims[k + 1] * dims[j + 1]
                             for k in range(i, j))
    return best[0][n - 1]


RNN_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def rnn_macs(rows: int, weights: Sequence) -> int:
    """MACs of a recurrent layer (one direction of one layer) over `rows` = time steps x batch:
    every step multiplies its input by W_ih (G H x I), its hidden state by W_hh (G H x H_out)
    and, with a projection (LSTM proj_size), the new hidden state by W_hr (H_out x H):
    rows (G H I + G H H_out + H_out H). G: 4 gates (LSTM), 3 (GRU), 1 (RNN). Biases are adds.
    """
    return rows * sum(prod(w.shape) for w in weights)
