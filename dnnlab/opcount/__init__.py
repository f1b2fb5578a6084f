"""Counting operations of conv and linear layers (seed, problem 2), reconciled with fvcore."""
from dnnlab.opcount.counter import build_meta, count_ops, torchvision_input_shape
from dnnlab.opcount.report import FAMILIES, MAC_FAMILIES, LayerRow, OpReport

__all__ = ["FAMILIES", "MAC_FAMILIES", "LayerRow", "OpReport", "build_meta", "count_ops",
           "torchvision_input_shape"]
