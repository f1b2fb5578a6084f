"""dnnlab.opcount.rows: OpReport's totals and its JSON and CSV exports; totals(causal=True):
masked attention's unmasked products, exact against a loop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dnnlab.opcount import count_ops


def test_exports(tmp_path):
    report = count_ops(torchvision.models.alexnet(), [1, 3, 224, 224])
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert data["totals"]["conv"] == 655_566_528
    assert data["layers"][0]["path"] == "features.0"
    report.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("path,module_type,op,family") and len(lines) == 1 + len(
        report.layers)
    assert lines[1].startswith("features.0,Conv2d,conv2d,conv,1x3x224x224,1x64x55x55,70276800")


class Attention(nn.Module):
    """SDPA with is_causal, a boolean mask or a float mask (a buffer: values the counter sees)."""

    def __init__(self, mask: torch.Tensor | None = None, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.register_buffer("mask", mask)

    def forward(self, q, k, v):  # (B, H, L, E), (B, H, S, E), (B, H, S, Ev)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask,
                                              is_causal=self.causal)


def loop_macs(keep: torch.Tensor, E: int, Ev: int) -> int:
    """One q.k (E MACs) and one weight times v (Ev MACs) per kept (query, key) pair, counted by
    walking every batch, head, query and key."""
    B, H, L, S = keep.shape
    macs = 0
    for b in range(B):
        for h in range(H):
            for i in range(L):
                for j in range(S):
                    if keep[b, h, i, j]:
                        macs += E + Ev
    return macs


def qkv(B=2, H=3, L=5, S=5, E=4, Ev=6):
    return (torch.zeros(B, H, L, E), torch.zeros(B, H, S, E), torch.zeros(B, H, S, Ev))


@pytest.mark.parametrize("L,S", [(5, 5), (3, 7), (7, 3)])
def test_is_causal_is_exact(L, S):
    q, k, v = qkv(L=L, S=S)
    report = count_ops(Attention(causal=True), inputs=(q, k, v))
    keep = torch.ones(L, S, dtype=torch.bool).tril().expand(2, 3, L, S)  # torch's is_causal
    assert report.totals(causal=True)["attention"] == loop_macs(keep, 4, 6)
    assert report.totals()["attention"] == 2 * 3 * L * S * (4 + 6)  # dense, the default
    # the same mask given explicitly: the same count, and torch gives the same output
    qr, kr, vr = (torch.randn_like(t) for t in (q, k, v))
    masked = Attention(torch.ones(L, S, dtype=torch.bool).tril())
    assert torch.allclose(masked(qr, kr, vr), Attention(causal=True)(qr, kr, vr), atol=1e-6)
    again = count_ops(masked, inputs=(q, k, v), device="cpu")
    assert again.totals(causal=True) == report.totals(causal=True)


def test_square_causal_is_about_half():
    L = 64
    report = count_ops(Attention(causal=True), inputs=qkv(B=1, H=1, L=L, S=L))
    assert report.totals(causal=True)["attention"] / report.totals()["attention"] == (
        (L + 1) / (2 * L))  # L (L + 1) / 2 pairs of L^2


def test_boolean_and_float_masks_it_can_see():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(2, 1, 5, 5, generator=g) > 0.4  # per batch, broadcast over heads
    keep[..., 0] = True  # every query keeps a key
    report = count_ops(Attention(keep), inputs=qkv(), device="cpu")
    assert report.totals(causal=True)["attention"] == loop_macs(keep.expand(2, 3, 5, 5), 4, 6)
    additive = torch.zeros(5, 5).masked_fill(~keep[0, 0], float("-inf"))
    report = count_ops(Attention(additive), inputs=qkv(), device="cpu")
    assert report.totals(causal=True)["attention"] == loop_macs(
        keep[0, 0].expand(2, 3, 5, 5), 4, 6)


def test_without_a_mask_or_on_meta_dense_is_all_there_is():
    report = count_ops(Attention(), inputs=qkv())
    assert not report.has_causal() and report.totals(causal=True) == report.totals()
    meta = count_ops(Attention(torch.ones(5, 5, dtype=torch.bool)), inputs=qkv())  # meta buffer
    assert not meta.has_causal()  # values unseen: dense, not guessed


def test_backward_and_json():
    q, k, v = (t.requires_grad_() for t in qkv())
    report = count_ops(Attention(causal=True), inputs=(q, k, v))
    pairs = 2 * 3 * 15  # 5 queries: 1 + 2 + ... + 5 keys
    assert report.totals(causal=True, backward=True)["attention"] == pairs * (2 * 4 + 2 * 6)
    d = report.to_dict()
    assert d["causal_totals"]["attention"] == pairs * 10
    assert d["layers"][0]["causal_macs"] == pairs * 10


def test_the_pipeline_result_shows_both_numbers():
    from dnnlab.opcount.experiment import run

    result = run(Attention(causal=True), inputs=qkv(), reconcile_counts=False)
    pairs = 2 * 3 * 15
    assert result.to_dict()["causal_totals"]["attention"] == pairs * 10
    assert result.to_dict()["totals"]["attention"]["analytic"] == 2 * 3 * 25 * 10  # dense
    assert f"{2 * 3 * 25 * 10:,} MACs dense" in result.mode_line()
    assert f"{pairs * 10:,} causal" in result.mode_line()
    assert result.summary()["macs/attention_causal"] == pairs * 10
    assert "causal_totals" in result.to_dict() and run(
        Attention(), inputs=qkv(), reconcile_counts=False).to_dict()["causal_totals"] is None
