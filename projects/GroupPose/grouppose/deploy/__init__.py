"""Deployment of Group Pose: torch.export and ONNX export, and ONNX Runtime inference without
Detectron2.

    from grouppose.deploy import OnnxPosePredictor          # numpy, Pillow, onnxruntime
    poses = OnnxPosePredictor("model.onnx")(image_bgr)       # PosePrediction, best first

    from grouppose.deploy import export_onnx                 # torch, onnx, onnxscript
    export_onnx(model, "model.onnx", dynamic=True, cfg=cfg)

    from grouppose.deploy import export_grouppose            # torch
    torch.export.save(export_grouppose(model, height=800, width=1216), "grouppose.pt2")

Importing this package needs neither torch nor Detectron2: the exporters (``torch_export``,
``onnx_export``, which need torch) are imported on first use.
"""

import importlib

from grouppose.deploy.metadata import DeployMetadata, PosePrediction, resized_shape
from grouppose.deploy.onnx_predictor import OnnxPosePredictor

__all__ = [
    "DeployMetadata",
    "GroupPoseExportModule",
    "OnnxPosePredictor",
    "PosePrediction",
    "export_grouppose",
    "export_onnx",
    "resized_shape",
]

# The torch side, imported only when asked for: name -> its module in grouppose.deploy.
_TORCH_SIDE = {
    "GroupPoseExportModule": "torch_export",
    "export_grouppose": "torch_export",
    "export_onnx": "onnx_export",
}


def __getattr__(name: str):
    if name in _TORCH_SIDE:
        return getattr(importlib.import_module(f"grouppose.deploy.{_TORCH_SIDE[name]}"), name)
    raise AttributeError(f"module 'grouppose.deploy' has no attribute '{name}'")
