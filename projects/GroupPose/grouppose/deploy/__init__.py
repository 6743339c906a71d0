"""Deployment of Group Pose without Detectron2: ONNX export and ONNX Runtime inference.

    from grouppose.deploy import OnnxPosePredictor          # numpy, Pillow, onnxruntime
    poses = OnnxPosePredictor("model.onnx")(image_bgr)       # PosePrediction, best first

    from grouppose.deploy import export_onnx                 # torch, onnx, onnxscript
    export_onnx(model, "model.onnx", dynamic=True, cfg=cfg)

Importing this package needs neither torch nor Detectron2: ``export_onnx`` (which needs torch)
is imported on first use.
"""

from grouppose.deploy.metadata import DeployMetadata, PosePrediction, resized_shape
from grouppose.deploy.onnx_predictor import OnnxPosePredictor

__all__ = [
    "DeployMetadata",
    "OnnxPosePredictor",
    "PosePrediction",
    "export_onnx",
    "resized_shape",
]


def __getattr__(name: str):
    # The torch side, imported only when asked for.
    if name == "export_onnx":
        from grouppose.deploy.onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'grouppose.deploy' has no attribute '{name}'")
