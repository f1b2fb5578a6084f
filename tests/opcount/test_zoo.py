"""Counting any model: inputs of any dtype and structure, models that need values (CPU mode),
shared and tied weights, the model intact afterwards; timm, Hugging Face, RAFT, detection,
video and segmentation models (slow) against fvcore and FlopCounterMode on meta."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dnnlab.core.errors import DnnlabError, ShapeError
from dnnlab.opcount import count_ops, reconcile
from dnnlab.opcount.reconcile import fvcore_counts


class NeedsValues(nn.Module):
    """A conv, then a data-dependent shape (nonzero), a BN whose stats change in train mode,
    and a cache written during forward."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)
        self.cache: dict = {}

    def forward(self, x):
        y = self.bn(self.conv(x))
        self.cache[str(y.device)] = y.shape
        keep = y.mean((2, 3)).flatten().nonzero()
        return self.fc(y.mean((2, 3))) + keep.shape[0]


def snapshot(model: nn.Module) -> tuple:
    return ({k: (v.clone(), v.device, v.requires_grad) for k, v in model.state_dict().items()},
            {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), m.training,
                 dict(m.__dict__.get("cache", {}))) for n, m in model.named_modules()})


def intact(model: nn.Module, snap: tuple) -> bool:
    params, mods = snapshot(model)
    return all(torch.equal(params[k][0], v[0]) and params[k][1:] == v[1:]
               for k, v in snap[0].items()) and mods == snap[1]


def test_model_that_needs_values_counts_on_cpu_and_stays_intact():
    model = NeedsValues().train()
    model.register_forward_hook(lambda m, a, o: None)
    snap = snapshot(model)
    report = count_ops(model, [2, 3, 8, 8])
    assert report.mode == "cpu" and "nonzero" in report.mode_reason
    assert report.totals()["conv"] == 2 * 4 * 36 * 27 and report.totals()["linear"] == 2 * 8
    assert intact(model, snap)
    with pytest.raises(ShapeError, match=r"layer 'conv' \(Conv2d\)"):
        count_ops(model, [2, 5, 8, 8])  # fails: still intact, fvcore still counts it
    assert intact(model, snap)
    assert fvcore_counts(model, [2, 3, 8, 8])["conv"]["conv"] == 2 * 4 * 36 * 27
    assert intact(model, snap)


def test_tied_weights_and_shared_modules_counted_once_per_call():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.block = nn.Linear(16, 16)
            self.again = self.block  # a module under two names
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight  # a tied LM head

        def forward(self, ids, mask=None):
            h = self.again(self.block(self.emb(ids)))
            return self.head(h) * (1 if mask is None else mask[..., None])

    model = Tied()
    ids = torch.zeros(2, 7, dtype=torch.long)
    report = count_ops(model, inputs={"ids": ids, "mask": torch.ones(2, 7)})
    assert report.totals()["linear"] == 2 * 7 * (16 * 16 * 2 + 16 * 50)
    assert report.inputs == "ids=int64[2, 7], mask=float32[2, 7]"
    assert model.head.weight is model.emb.weight and model.emb.weight.device.type == "cpu"
    rec = reconcile(model, inputs=(ids,), backward=False)
    assert rec.reconciled, (rec.failed, rec.totals)


def test_inputs_and_settings_errors():
    with pytest.raises(ShapeError, match="either input_shape or inputs"):
        count_ops(nn.Linear(2, 2))
    with pytest.raises(ShapeError, match="layer '<model>' .*input_ids"):
        count_ops(nn.Embedding(5, 3), inputs={"input_ids": torch.zeros(2)})
    from dnnlab.opcount.zoo import make_inputs

    x = make_inputs({"input_ids": {"shape": [1, 4], "dtype": "int64", "high": 7}})
    assert x["input_ids"].dtype == torch.int64 and int(x["input_ids"].max()) < 7
    imgs = make_inputs([[{"shape": [3, 8, 8]}, {"shape": [3, 6, 6]}]])
    assert isinstance(imgs, tuple) and [t.shape[1] for t in imgs[0]] == [8, 6]
    with pytest.raises(DnnlabError, match=r"inputs.x.dtype='cplx'"):
        make_inputs({"x": {"shape": [1], "dtype": "cplx"}})


def _check(model, *, input_shape=None, inputs=None, fvcore=True):
    report = count_ops(model, input_shape, inputs=inputs)
    # the dispatch-level net adds nothing where the function layer counts everything: the
    # totals are those of the function layer alone, as before the net
    assert not [r.op for r in report.layers if r.extra.get("level") == "dispatch"]
    rec = reconcile(model, input_shape, inputs=inputs, report=report, backward=False)
    fc = rec.flop_counter
    assert fc["forward_match"], fc  # product families == FlopCounterMode (meta, or CPU mode)
    if fvcore:
        assert not rec.fvcore_error, rec.fvcore_error
        for fam in ("conv", "linear"):
            assert rec.totals[fam]["analytic"] == rec.totals[fam]["fvcore"], (fam, rec.totals)
        assert rec.reconciled is True, rec.failed
    else:  # fvcore cannot trace it: not reconciled, but nothing failed
        assert rec.reconciled is None and rec.skipped == ["fvcore"], (rec.failed, rec.skipped)
    return report, rec


TIMM = ["resnet50", "efficientnet_b0", "mobilenetv3_small_100", "regnety_002", "convnext_atto",
        "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "mixer_s32_224",
        "resmlp_12_224", "levit_128s", "mobilevit_xxs", "efficientformer_l1", "fastvit_t8",
        "coat_tiny", "cait_xxs24_224", "maxvit_nano_rw_256", "ghostnet_100"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM)
def test_timm_models(name):
    from dnnlab.opcount.zoo import default_input_shape, timm_model

    model = timm_model(name)
    snap = snapshot(model)
    report, _ = _check(model, input_shape=default_input_shape(model))
    assert report.mode == "meta" and intact(model, snap)


@pytest.mark.slow
@pytest.mark.parametrize("kind,fvcore", [("BertModel/BertConfig", True),
                                         ("GPT2LMHeadModel/GPT2Config", False)])
def test_hugging_face_models_on_token_ids(kind, fvcore):
    from dnnlab.opcount.zoo import hf_model

    model = hf_model(*kind.split("/"))
    ids = {"input_ids": torch.randint(0, 1000, (1, 64))}
    report, rec = _check(model, inputs=ids, fvcore=fvcore)
    assert report.totals()["attention"] > 0 and (fvcore or rec.fvcore_error)


@pytest.mark.slow
@pytest.mark.parametrize("layer", [nn.LSTM(16, 32, 2, bidirectional=True),
                                   nn.GRU(16, 32, 3, bidirectional=True, batch_first=True)])
def test_recurrent_models(layer):
    _check(nn.Sequential(nn.Linear(16, 16), layer), input_shape=[6, 5, 16])


@pytest.mark.slow
def test_raft_two_images_detection_list_video_segmentation():
    import torchvision.models as tvm

    raft = tvm.optical_flow.raft_small()
    _check(raft, inputs=(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)))
    det = tvm.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None,
                                                              weights_backbone=None)
    snap = snapshot(det)
    report, _ = _check(det, inputs=[torch.rand(3, 320, 320)])
    assert report.mode == "cpu" and intact(det, snap)
    assert fvcore_counts(det, inputs=[torch.rand(3, 320, 320)])  # fvcore still counts it
    _check(tvm.video.r3d_18(), input_shape=[1, 3, 8, 112, 112])
    _check(tvm.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
           input_shape=[1, 3, 224, 224])
