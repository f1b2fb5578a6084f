"""Counting the operations of a network (docs/math.md (2)), reconciled with fvcore.

    from dnnlab.opcount import count_ops, reconcile
    report = count_ops(torchvision.models.alexnet(), [1, 3, 224, 224])
    report.totals()["conv"]            # 655_566_528

`count_ops` counts on the meta device (counter.py) with the handlers of registry.py (built-in:
handlers.py; another op: `register_handler`); `reconcile` checks against fvcore and torch's
FlopCounterMode; `experiment.run` is the pipeline's experiment, `report.report_section` its part
of report.md.
"""
from dnnlab.opcount.build import build_meta, torchvision_input_shape
from dnnlab.opcount.counter import count_ops
from dnnlab.opcount.devices import DEVICES, calibrate
from dnnlab.opcount.protocol import Count, CountError
from dnnlab.opcount.reconcile import reconcile
from dnnlab.opcount.registry import register_handler, unregister_handler
from dnnlab.opcount.roofline import roofline
from dnnlab.opcount.rows import FAMILIES, MAC_FAMILIES, LayerRow, OpReport

__all__ = ["Count", "CountError", "DEVICES", "FAMILIES", "MAC_FAMILIES", "LayerRow", "OpReport",
           "build_meta", "calibrate", "count_ops", "reconcile", "register_handler", "roofline",
           "torchvision_input_shape", "unregister_handler"]
